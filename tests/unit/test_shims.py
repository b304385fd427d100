"""The moto compatibility shims (kpipe/local/shims.py): each gap, and that the shim closes it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import Resource
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (
    StateTaskServiceAwsSdk,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_ecs import (
    StateTaskServiceEcs,
)

from kpipe.local import shims

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/sfn"


@pytest.fixture(autouse=True)
def _installed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    shims.install()
    shims.install()  # idempotent


def _service(cls: type, arn: str) -> Any:
    service = cls()
    service.resource = Resource.from_resource_arn(arn)
    return service


def test_substitute_replaces_given_placeholders_only() -> None:
    text = '{"Cluster": "${ClusterArn}", "Token.$": "$$.Task.Token", "Other": "${Unknown}", "Two": "${A}-${A}"}'
    assert shims.substitute(text, {"ClusterArn": "arn:c", "A": "x"}) == (
        '{"Cluster": "arn:c", "Token.$": "$$.Task.Token", "Other": "${Unknown}", "Two": "x-x"}'
    )
    assert shims.substitute(text, None) == text


def test_ecs_run_task_parameters_become_the_apis_camel_case() -> None:
    service = _service(StateTaskServiceEcs, "arn:aws:states:::ecs:runTask.waitForTaskToken")
    params = {
        "LaunchType": "FARGATE",
        "Cluster": "arn:c",
        "TaskDefinition": "arn:td",
        "NetworkConfiguration": {"AwsvpcConfiguration": {"Subnets": ["s-1"], "SecurityGroups": ["sg-1"], "AssignPublicIp": "ENABLED"}},
        "Overrides": {"ContainerOverrides": [{"Name": "kpipe", "Environment": [{"Name": "K", "Value": "v"}]}]},
    }
    service._normalise_parameters(params)
    assert params == {
        "launchType": "FARGATE",
        "cluster": "arn:c",
        "taskDefinition": "arn:td",
        "networkConfiguration": {"awsvpcConfiguration": {"subnets": ["s-1"], "securityGroups": ["sg-1"], "assignPublicIp": "ENABLED"}},
        "overrides": {"containerOverrides": [{"name": "kpipe", "environment": [{"name": "K", "value": "v"}]}]},
    }


def test_ecs_responses_become_pascal_case_as_step_functions_reports_them() -> None:
    service = _service(StateTaskServiceEcs, "arn:aws:states:::ecs:runTask.waitForTaskToken")
    response = {"tasks": [{"taskArn": "arn:t", "clusterArn": "arn:c", "lastStatus": "RUNNING"}], "failures": []}
    service._normalise_response(response, service_action_name="describe_tasks")
    assert response == {"Tasks": [{"TaskArn": "arn:t", "ClusterArn": "arn:c", "LastStatus": "RUNNING"}], "Failures": []}


def test_aws_sdk_integrations_of_camel_case_apis_are_normalised_too() -> None:
    service = _service(StateTaskServiceAwsSdk, "arn:aws:states:::aws-sdk:sfn:describeExecution")
    params = {"ExecutionArn": "arn:e"}
    service._normalise_parameters(params)
    assert params == {"executionArn": "arn:e"}
    response = {"executionArn": "arn:e", "status": "RUNNING"}
    service._normalise_response(response)
    assert response == {"ExecutionArn": "arn:e", "Status": "RUNNING"}


@pytest.fixture
def executing() -> Iterator[None]:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield


def _wait(sfn: Any, arn: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (described := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    return described


def test_a_cloudformation_state_machine_gets_its_substitutions_and_can_be_executed(executing: None) -> None:
    definition = {"StartAt": "Say", "States": {"Say": {"Type": "Pass", "Result": {"table": "${TableName}"}, "End": True}}}
    template = {
        "Resources": {
            "Machine": {
                "Type": "AWS::StepFunctions::StateMachine",
                "Properties": {
                    "StateMachineName": "shimmed",
                    "RoleArn": ROLE,
                    "DefinitionString": json.dumps(definition),
                    "DefinitionSubstitutions": {"TableName": "KpipeControl"},
                },
            }
        },
        "Outputs": {"Arn": {"Value": {"Ref": "Machine"}}},
    }
    cfn = boto3.client("cloudformation", region_name=REGION)
    cfn.create_stack(StackName="shim", TemplateBody=json.dumps(template))
    arn = cfn.describe_stacks(StackName="shim")["Stacks"][0]["Outputs"][0]["OutputValue"]
    sfn = boto3.client("stepfunctions", region_name=REGION)
    assert "${" not in sfn.describe_state_machine(stateMachineArn=arn)["definition"]
    execution = sfn.start_execution(stateMachineArn=arn)["executionArn"]
    described = _wait(sfn, execution)
    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"]) == {"table": "KpipeControl"}


def test_send_task_failure_keeps_its_cause(executing: None) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    queue = sqs.create_queue(QueueName="tokens")["QueueUrl"]
    definition = {
        "StartAt": "Wait",
        "States": {
            "Wait": {
                "Type": "Task",
                "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                "Parameters": {"QueueUrl": queue, "MessageBody": {"token.$": "$$.Task.Token"}},
                "End": True,
            }
        },
    }
    sfn = boto3.client("stepfunctions", region_name=REGION)
    machine = sfn.create_state_machine(name="tokens", definition=json.dumps(definition), roleArn=ROLE)["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine)["executionArn"]
    messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5)["Messages"]
    token = json.loads(messages[0]["Body"])["token"]
    sfn.send_task_failure(taskToken=token, error="Kpipe.TaskFailed", cause="the reason a report shows")
    described = _wait(sfn, execution)
    assert described["status"] == "FAILED"
    assert (described["error"], described["cause"]) == ("Kpipe.TaskFailed", "the reason a report shows")
