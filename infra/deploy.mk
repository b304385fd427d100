# Deploy kpipe to a real AWS account (included by the top-level Makefile; steps in infra/README.md).
#
#   make deploy  STAGE=dev [ALARM_EMAIL=you@example.com] [SUBNET_A=... SUBNET_B=... SECURITY_GROUP_ID=...]
#   make destroy STAGE=dev
#
# Each step is its own target, so a failed deployment resumes from the step that failed:
#   deploy-check -> deploy-stack -> deploy-image -> deploy-config -> deploy-lambda
# Nothing here runs at parse time: `make test` and `make run` never touch AWS.

STAGE ?= dev
BIN ?= .venv/bin
STACK_NAME ?= kpipe-$(STAGE)
# Tables are per stage so dev and prod can share an account: every KPI table of pipeline.yaml is named
# <TABLE_PREFIX><table> (passed on every deploy; changing it creates new tables, stated, the old ones kept),
# the control table on the first deploy; TABLE_PREFIX= gives the bare contract names.
TABLE_PREFIX ?= $(STACK_NAME)-
# The pipeline.yaml whose KPI tables the stack holds and which deploy-config uploads.
CONFIG ?= pipeline.yaml
ALARM_EMAIL ?=
# Networking: empty = the default VPC's default subnets and its default security group (first deploy only;
# later deploys keep the stack's values unless you pass new ones).
SUBNET_A ?=
SUBNET_B ?=
SECURITY_GROUP_ID ?=
TASK_CPU ?=
TASK_MEMORY ?=
IMAGE_TAG ?= $(shell git describe --always --dirty 2>/dev/null || echo manual)
OUTPUTS_FILE ?= build/infra/outputs-$(STAGE).json

KPIPE_INFRA = $(BIN)/python -m kpipe.infra
# First-party files beyond chalicelib/ the Lambda imports (tests/infra/test_infra_lambda_bundle.py keeps this true)
LAMBDA_VENDOR = kpipe/__init__.py kpipe/engine/__init__.py kpipe/engine/vocabulary.py kpipe/engine/patterns.py
# Re-enter the same top-level makefile for each step (it includes this file).
STEP = $(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) STAGE=$(STAGE)
# $(call stack_output,Name): one output of the deployed stack, read at recipe time.
stack_output = $$($(KPIPE_INFRA) outputs --stack-name $(STACK_NAME) --key $(1))

.PHONY: deploy deploy-check deploy-stack deploy-image deploy-config deploy-lambda destroy

## Build and push the task image, deploy the stack, upload pipeline.yaml, write the stage config, chalice deploy.
deploy: deploy-check
	$(STEP) deploy-stack
	$(STEP) deploy-image
	$(STEP) deploy-config
	$(STEP) deploy-lambda
	@echo "kpipe $(STAGE) deployed. Upload a batch: see infra/README.md ('Run a batch')."

## Prerequisites: the venv, the AWS CLI, Docker, credentials and a region.
deploy-check: $(BIN)/.installed
	@command -v aws >/dev/null || { echo "error: the AWS CLI v2 is required (infra/README.md)"; exit 2; }
	@command -v docker >/dev/null || { echo "error: Docker is required to build the task image"; exit 2; }
	@region=$$($(BIN)/python -c 'import boto3; print(boto3.Session().region_name or "")'); \
	  test -n "$$region" || { echo "error: no AWS region; export AWS_DEFAULT_REGION (or set one in your profile)"; exit 2; }; \
	  account=$$(aws sts get-caller-identity --query Account --output text) || { echo "error: no working AWS credentials"; exit 2; }; \
	  echo "deploying stage $(STAGE) as stack $(STACK_NAME) to account $$account, region $$region"

## 1. The CloudFormation stack (kpipe/infra.py renders infra/template.yaml with the state machine inlined and
##    the KPI tables of $(CONFIG); a KPI table renamed or re-keyed since the last deploy is stated, its old table kept).
deploy-stack:
	@set -e; params=""; \
	if ! $(KPIPE_INFRA) outputs --stack-name $(STACK_NAME) >/dev/null 2>&1; then \
	  subnet_a="$(SUBNET_A)"; subnet_b="$(SUBNET_B)"; sg="$(SECURITY_GROUP_ID)"; \
	  if [ -z "$$subnet_a" ]; then \
	    set -- $$(aws ec2 describe-subnets --filters Name=default-for-az,Values=true \
	      --query 'sort_by(Subnets,&AvailabilityZone)[].SubnetId' --output text); \
	    subnet_a="$${1:?no default VPC: pass SUBNET_A, SUBNET_B and SECURITY_GROUP_ID}"; subnet_b="$${2:-$$1}"; \
	  fi; \
	  if [ -z "$$sg" ]; then \
	    vpc=$$(aws ec2 describe-subnets --subnet-ids "$$subnet_a" --query 'Subnets[0].VpcId' --output text); \
	    sg=$$(aws ec2 describe-security-groups --filters Name=vpc-id,Values="$$vpc" Name=group-name,Values=default \
	      --query 'SecurityGroups[0].GroupId' --output text); \
	  fi; \
	  params="--param SubnetA=$$subnet_a --param SubnetB=$${subnet_b:-$$subnet_a} --param SecurityGroupId=$$sg"; \
	  params="$$params --param ControlTableName=$(TABLE_PREFIX)KpipeControl"; \
	else \
	  params="$(if $(SUBNET_A),--param SubnetA=$(SUBNET_A)) $(if $(SUBNET_B),--param SubnetB=$(SUBNET_B))"; \
	  params="$$params $(if $(SECURITY_GROUP_ID),--param SecurityGroupId=$(SECURITY_GROUP_ID))"; \
	fi; \
	params="$$params $(if $(ALARM_EMAIL),--param AlarmEmail=$(ALARM_EMAIL)) $(if $(TASK_CPU),--param TaskCpu=$(TASK_CPU))"; \
	params="$$params $(if $(TASK_MEMORY),--param TaskMemory=$(TASK_MEMORY)) --param KpiTablePrefix=$(TABLE_PREFIX)"; \
	echo "$(KPIPE_INFRA) deploy --stack-name $(STACK_NAME) --config $(CONFIG) $$params"; \
	$(KPIPE_INFRA) deploy --stack-name $(STACK_NAME) --config $(CONFIG) $$params --outputs-file $(OUTPUTS_FILE)

## 2. Build the task image, push it to the stack's ECR repository, point the task definitions at it.
deploy-image:
	@set -e; repo=$(call stack_output,RepositoryUri); \
	aws ecr get-login-password | docker login --username AWS --password-stdin "$${repo%%/*}"; \
	docker build --platform linux/amd64 -f ecs_tasks/Dockerfile -t "$$repo:$(IMAGE_TAG)" .; \
	docker push "$$repo:$(IMAGE_TAG)"; \
	$(KPIPE_INFRA) deploy --stack-name $(STACK_NAME) --config $(CONFIG) --param ImageUri="$$repo:$(IMAGE_TAG)" --outputs-file $(OUTPUTS_FILE)

## 3. The pipeline configuration in force: s3://<bucket>/config/pipeline.yaml (its KPI tables must be the
##    stack's: deploy-stack with the same CONFIG first when you added or changed one).
deploy-config:
	aws s3 cp $(CONFIG) s3://$(call stack_output,BucketName)/config/pipeline.yaml

## 4. The Lambda: stage environment + IAM policy from the stack outputs, then chalice deploy.
deploy-lambda:
	$(KPIPE_INFRA) outputs --stack-name $(STACK_NAME) --outputs-file $(OUTPUTS_FILE) >/dev/null
	$(BIN)/python infra/write_stage_config.py --stage $(STAGE) --outputs $(OUTPUTS_FILE)
	@# chalice ships app.py, chalicelib/ and vendor/: the config model's vocabulary goes in vendor/
	rm -rf vendor && for f in $(LAMBDA_VENDOR); do mkdir -p vendor/$$(dirname $$f) && cp $$f vendor/$$f; done
	KPIPE_BUCKET=$(call stack_output,BucketName) $(BIN)/chalice deploy --stage $(STAGE)

## Remove the stage: the Lambda and its API (chalice delete), every object version, then the stack.
destroy: $(BIN)/.installed
	@if [ -f .chalice/deployed/$(STAGE).json ]; then \
	  echo "$(BIN)/chalice delete --stage $(STAGE)"; \
	  KPIPE_BUCKET=$$($(KPIPE_INFRA) outputs --stack-name $(STACK_NAME) --key BucketName 2>/dev/null || echo kpipe-local) \
	    $(BIN)/chalice delete --stage $(STAGE); \
	else echo "no .chalice/deployed/$(STAGE).json: no Lambda to delete"; fi
	$(KPIPE_INFRA) destroy --stack-name $(STACK_NAME)
	rm -f $(OUTPUTS_FILE)
