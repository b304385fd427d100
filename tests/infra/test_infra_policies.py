"""Every IAM policy kpipe deploys, read statement by statement: no wildcard actions, no `Resource: "*"`
where AWS offers a resource type, S3 objects scoped to pipeline prefixes, and each principal holding
exactly the actions its code (or its state machine definition) calls.

Which actions accept a resource type comes from cfn-lint's copy of the IAM service reference, so the
allow-list below cannot hide an action that could have been scoped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cfnlint
import pytest
import yaml

from infra import write_stage_config as wsc
from tests.infra.support import ROOT, called_names, reachable

# Actions AWS authorises only on "*" (no resource type in the service reference), each with why we need it.
STAR_ONLY_ACTIONS = {
    "ecr:GetAuthorizationToken": "the ECS agent's registry login before pulling the task image",
    "states:SendTaskSuccess": "a task reporting its result; the task token itself is the capability",
    "states:SendTaskFailure": "a task reporting its failure (same token)",
    "states:SendTaskHeartbeat": "a long task proving it is alive (same token)",
}

# Bucket-level actions granted without an s3:prefix condition, and why.
BUCKET_WIDE_ACTIONS = {
    "s3:ListBucket": (
        "key names only; S3 answers 404 NoSuchKey for a missing key only to a principal that may list the "
        "bucket (403 otherwise), and the code tells 'not there yet' from 'denied' by that"
    ),
}

POLICIES_JSON = json.loads((Path(cfnlint.__file__).parent / "data" / "AdditionalSpecs" / "Policies.json").read_text())


def resource_types(action: str) -> list[str] | None:
    """The resource types an action accepts per the IAM reference; None for an unknown action."""
    service, _, name = action.partition(":")
    spec = POLICIES_JSON.get(service, {}).get("Actions", {}).get(name.lower())
    return None if spec is None else spec.get("Resources", [])


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def text(value: Any) -> str:
    """A resource expression as text: `${PipelineBucket.Arn}/raw-data/*`, `<ControlTable.Arn>`."""
    if isinstance(value, str):
        return value
    if "Fn::Sub" in value:
        return value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
    if "Fn::GetAtt" in value:
        return "<{}>".format(".".join(value["Fn::GetAtt"]))
    if "Ref" in value:
        return "<{}>".format(value["Ref"])
    if "Fn::Join" in value:
        return value["Fn::Join"][0].join(text(v) for v in value["Fn::Join"][1])
    raise AssertionError(f"unexpected resource expression {value!r}")


def template_policies(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, res in template["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::IAM::Role":
            assert "ManagedPolicyArns" not in props, f"{logical_id}: managed policies are broader than the role needs"
            yield f"{logical_id} (trust)", props["AssumeRolePolicyDocument"]
            for policy in props.get("Policies", []):
                yield f"{logical_id}/{policy['PolicyName']}", policy["PolicyDocument"]
        elif res["Type"] in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"} or "PolicyDocument" in props:
            yield logical_id, props["PolicyDocument"]


def chalice_policies() -> Iterator[tuple[str, dict[str, Any]]]:
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    for stage, cfg in config["stages"].items():
        path = ROOT / ".chalice" / cfg["iam_policy_file"]
        yield f".chalice/{path.name}", json.loads(path.read_text())
        yield f"lambda_policy({stage}, deployed outputs)", wsc.lambda_policy(SAMPLE_OUTPUTS, stage)


SAMPLE_OUTPUTS = {
    "BucketName": "kpipe-dev-pipelinebucket-1a2b3c",
    "StateMachineArn": "arn:aws:states:eu-west-1:111122223333:stateMachine:kpipe-dev-pipeline",
    "KpiTables": '{"OrderKPI":"OrderKPI-dev","CategoryKPI":"CategoryKPI-dev"}',
    "KpiTableIndexes": '{"OrderKPI":[],"CategoryKPI":["order_date-index"]}',
    "ControlTableName": "KpipeControl-dev",
}


def all_policies(rendered: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [*template_policies(rendered), *chalice_policies()]


def allow_statements(rendered: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, doc in all_policies(rendered):
        for i, st in enumerate(as_list(doc["Statement"])):
            if st["Effect"] == "Allow":  # a Deny only ever narrows access
                yield f"{name}#{st.get('Sid', i)}", st


def test_policies_are_found(rendered: dict[str, Any]) -> None:
    names = [n for n, _ in all_policies(rendered)]
    assert {"TaskRole/pipeline-bucket", "StateMachineRole/run-pipeline-tasks", ".chalice/policy-dev.json"} <= set(names)
    assert ".chalice/policy-prod.json" in names


def test_no_wildcard_actions(rendered: dict[str, Any]) -> None:
    problems = []
    for where, st in allow_statements(rendered):
        if "NotAction" in st or "NotResource" in st:
            problems.append(f"{where}: NotAction/NotResource grants everything else")
        for action in as_list(st.get("Action", [])):
            if "*" in action:
                problems.append(f"{where}: wildcard action {action}")
            elif not action.startswith("sts:") and resource_types(action) is None:
                problems.append(f"{where}: unknown action {action}")
    assert problems == []


def test_star_resources_only_where_aws_offers_nothing_narrower(rendered: dict[str, Any]) -> None:
    for action in STAR_ONLY_ACTIONS:
        assert resource_types(action) == [], f"{action} has a resource type now; scope it and drop it from the list"
    problems = []
    for where, st in allow_statements(rendered):
        if "Principal" in st:  # a trust policy or a resource policy: the principal is the scope
            continue
        resources = [text(r) for r in as_list(st["Resource"])]
        for action in as_list(st["Action"]):
            if "*" in resources and action not in STAR_ONLY_ACTIONS:
                problems.append(f"{where}: {action} on '*' (it accepts {resource_types(action)})")
            if "*" in resources and len(resources) > 1:
                problems.append(f"{where}: '*' next to scoped resources")
        for res in resources:
            if res != "*" and res.startswith("arn:"):
                parts = res.split(":", 5)
                if len(parts) < 6 or parts[5] in {"*", ""} or "*" in parts[2]:
                    problems.append(f"{where}: unscoped ARN {res}")
    assert problems == []


def is_object_resource(res: str) -> bool:
    """`arn:aws:s3:::bucket/key*` or `${PipelineBucket.Arn}/key*` (objects) vs the bucket itself."""
    if res.startswith("arn:"):
        return "/" in res.split(":::", 1)[1]
    return "}/" in res


def test_s3_object_access_is_scoped_to_pipeline_prefixes(rendered: dict[str, Any]) -> None:
    """An object grant names a prefix of pipeline.yaml's storage, never the whole bucket."""
    storage = set(yaml.safe_load((ROOT / "pipeline.yaml").read_text())["storage"].values())
    problems = []
    used: set[str] = set()
    for where, st in allow_statements(rendered):
        actions = as_list(st["Action"])
        if not any(a.startswith("s3:") for a in actions) or "Principal" in st:
            continue
        for res in map(text, as_list(st["Resource"])):
            if not is_object_resource(res):
                # bucket-level: listing, which must be narrowed by prefix
                prefixes = st.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
                if not prefixes and set(actions) - set(BUCKET_WIDE_ACTIONS):
                    problems.append(f"{where}: {actions} on the bucket without an s3:prefix condition")
                for p in as_list(prefixes or []):
                    used.add(p.rstrip("*"))
                continue
            prefix = res.rsplit("/", 2)[-2] + "/" if res.endswith("/*") else None
            if prefix is None or prefix not in storage:
                problems.append(f"{where}: object resource {res} is not under a pipeline prefix")
            else:
                used.add(prefix)
    assert problems == []
    assert used <= storage, used - storage  # nothing outside the layout pipeline.yaml declares


def test_task_role_covers_every_storage_prefix(rendered: dict[str, Any]) -> None:
    """The tasks read config/ and write or move objects in every other prefix; a prefix renamed in pipeline.yaml
    without the template following fails here, not with AccessDenied on AWS."""
    storage = yaml.safe_load((ROOT / "pipeline.yaml").read_text())["storage"]
    doc = next(d for n, d in template_policies(rendered) if n == "TaskRole/pipeline-bucket")
    texts = " ".join(text(r) for st in doc["Statement"] for r in as_list(st["Resource"]))
    conditions = json.dumps([st.get("Condition", {}) for st in doc["Statement"]])
    for name, prefix in storage.items():
        assert f"/{prefix}*" in texts, (name, prefix)
    assert f'"{storage["raw"]}*"' in conditions  # the snapshot lists the raw prefix's versions


ASL_SERVICE_TO_IAM = {"sfn": "states"}


def asl_task_resources(states: dict[str, Any]) -> Iterator[str]:
    for state in states.values():
        if state["Type"] == "Task":
            yield state["Resource"]
        for branch in state.get("Branches", []):
            yield from asl_task_resources(branch["States"])
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            yield from asl_task_resources(processor["States"])


def iam_actions_for(resource: str) -> set[str]:
    """The IAM actions a Step Functions integration calls (service integration ARNs)."""
    assert resource.startswith("arn:aws:states:::"), f"unsupported task resource {resource}"
    parts = resource.removeprefix("arn:aws:states:::").split(":")
    if parts[0] == "aws-sdk":
        service, api = parts[1], parts[2]
    else:
        service, api = parts[0], parts[1]
    api = api.split(".")[0]  # runTask.waitForTaskToken -> runTask
    return {f"{ASL_SERVICE_TO_IAM.get(service, service)}:{api[0].upper()}{api[1:]}"}


def test_state_machine_role_grants_exactly_what_the_asl_calls(rendered: dict[str, Any], asl_path: Path) -> None:
    asl = json.loads(asl_path.read_text())
    needed = set().union(*(iam_actions_for(r) for r in asl_task_resources(asl["States"])))
    if "ecs:RunTask" in needed:
        needed.add("iam:PassRole")  # RunTask hands the task and execution roles to ECS
    granted = {
        a
        for name, doc in template_policies(rendered)
        if name.startswith("StateMachineRole/")
        for st in doc["Statement"]
        for a in as_list(st["Action"])
    }
    assert granted == needed


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_lambda_policy_resources_are_the_stage_resources(stage: str) -> None:
    doc = wsc.lambda_policy(SAMPLE_OUTPUTS, stage)
    resources = {r for st in doc["Statement"] for r in as_list(st["Resource"])}
    bucket = f"arn:aws:s3:::{SAMPLE_OUTPUTS['BucketName']}"
    assert bucket in resources
    assert f"{bucket}/raw-data/*" not in resources  # the trigger lists raw-data/, never reads it
    assert "arn:aws:dynamodb:eu-west-1:111122223333:table/CategoryKPI-dev/index/order_date-index" in resources
    assert SAMPLE_OUTPUTS["StateMachineArn"] in resources
    assert all(f"/aws/lambda/kpipe-{stage}" in r for r in resources if ":logs:" in r)


# IAM action -> the boto3 calls that need it. Actions not listed map to their snake_case name
# (dynamodb:BatchGetItem -> batch_get_item). Logs and ECR actions are used by AWS on the role's behalf.
CALLS_FOR_ACTION = {
    "s3:GetObject": {"get_object", "download_file", "head_object", "copy_object"},
    "s3:GetObjectVersion": {"get_object", "download_file", "copy_object"},
    "s3:PutObject": {"put_object", "upload_file", "copy_object"},
    "s3:DeleteObject": {"delete_object", "delete_objects"},
    "s3:DeleteObjectVersion": {"delete_object", "delete_objects"},
    "s3:ListBucket": {"list_objects_v2", "get_object", "head_object", "download_file"},  # see BUCKET_WIDE_ACTIONS
    "s3:ListBucketVersions": {"list_object_versions"},
    "dynamodb:BatchWriteItem": {"batch_write_item", "batch_writer"},
}


def snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def unused_grants(actions: set[str], roots: list[Path]) -> list[str]:
    calls = called_names(reachable(roots))
    return sorted(
        a
        for a in actions
        if not a.startswith(("logs:", "ecr:")) and not CALLS_FOR_ACTION.get(a, {snake(a.split(":", 1)[1])}) & calls
    )


def test_task_role_grants_only_what_the_task_code_calls(rendered: dict[str, Any]) -> None:
    """No stale grant: every action of the task role is called by code the tasks run. (The reverse is
    not checked here: chalicelib also holds Lambda-only code the tasks import but never call.)"""
    roots = [ROOT / "ecs_tasks" / f"{t}.py" for t in ("validate", "transform", "finalize")]
    if not all(r.exists() for r in roots):
        pytest.skip("the ecs_tasks entrypoints have not landed yet")
    actions = {
        a
        for name, doc in template_policies(rendered)
        if name.startswith("TaskRole/")
        for st in doc["Statement"]
        for a in as_list(st["Action"])
    }
    assert unused_grants(actions, roots) == []


def test_lambda_policy_grants_only_what_the_app_calls() -> None:
    actions = {a for st in wsc.lambda_policy(SAMPLE_OUTPUTS, "dev")["Statement"] for a in as_list(st["Action"])}
    assert unused_grants(actions, [ROOT / "app.py"]) == []
