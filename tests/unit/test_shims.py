"""The moto compatibility shims (kpipe/local/shims.py): each gap, and that the shim closes it."""

from __future__ import annotations

import json
import threading
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
from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackEndpoint, CallbackOutcomeSuccess

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


def _token_task(name: str, **task: Any) -> tuple[Any, str, Any, str]:
    """A one-state machine whose Task sends its token to an SQS queue and waits; (sqs, queue, sfn, execution)."""
    sqs = boto3.client("sqs", region_name=REGION)
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    state = {
        "Type": "Task",
        "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "Parameters": {"QueueUrl": queue, "MessageBody": {"token.$": "$$.Task.Token"}},
        "End": True,
        **task,
    }
    sfn = boto3.client("stepfunctions", region_name=REGION)
    definition = json.dumps({"StartAt": "Work", "States": {"Work": state}})
    machine = sfn.create_state_machine(name=name, definition=definition, roleArn=ROLE)["stateMachineArn"]
    return sqs, queue, sfn, sfn.start_execution(stateMachineArn=machine)["executionArn"]


def test_send_task_failure_keeps_its_cause(executing: None) -> None:
    sqs, queue, sfn, execution = _token_task("tokens")
    messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5)["Messages"]
    token = json.loads(messages[0]["Body"])["token"]
    sfn.send_task_failure(taskToken=token, error="Kpipe.TaskFailed", cause="the reason a report shows")
    described = _wait(sfn, execution)
    assert described["status"] == "FAILED"
    assert (described["error"], described["cause"]) == ("Kpipe.TaskFailed", "the reason a report shows")


def test_a_token_answered_before_the_heartbeat_wait_is_set_up_is_not_lost() -> None:
    """ecs:runTask returns, the task answers at once, and only then does the state set up its heartbeat
    wait: that wait must see the answer instead of sleeping until HeartbeatSeconds and timing out."""
    endpoint = CallbackEndpoint(callback_id="token")
    endpoint.notify(CallbackOutcomeSuccess(callback_id="token", output="{}"))
    heartbeat = endpoint.setup_heartbeat_endpoint(heartbeat_seconds=1)
    assert heartbeat.clear_and_wait() is True  # moto alone: False (timed out) after the full second


def test_a_heartbeat_wait_set_up_before_any_answer_still_waits_for_one() -> None:
    endpoint = CallbackEndpoint(callback_id="token")
    heartbeat = endpoint.setup_heartbeat_endpoint(heartbeat_seconds=1)
    endpoint.notify(CallbackOutcomeSuccess(callback_id="token", output="{}"))
    assert heartbeat.clear_and_wait() is True
    assert CallbackEndpoint(callback_id="other").setup_heartbeat_endpoint(heartbeat_seconds=0).clear_and_wait() is False


def test_a_retried_task_waits_for_its_own_answer_not_the_last_attempts(executing: None) -> None:
    """moto keeps one token per state across retries: attempt 2 must not replay attempt 1's failure."""
    sqs, queue, sfn, execution = _token_task(
        "retried",
        HeartbeatSeconds=20,
        TimeoutSeconds=30,
        Retry=[{"ErrorEquals": ["Kpipe.Transient"], "IntervalSeconds": 1, "MaxAttempts": 1}],
    )

    def next_token() -> str:
        [message] = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=10)["Messages"]
        sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        return str(json.loads(message["Body"])["token"])

    sfn.send_task_failure(taskToken=next_token(), error="Kpipe.Transient", cause="attempt 1")
    sfn.send_task_success(taskToken=next_token(), output=json.dumps({"attempt": 2}))
    described = _wait(sfn, execution)
    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"]) == {"attempt": 2}


def test_the_interpreter_reuses_one_client_per_service_made_under_a_lock(executing: None) -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_ecs

    made: list[Any] = []
    threads = [threading.Thread(target=lambda: made.append(state_task_service_ecs.boto_client_for(REGION, "ecs"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 4 and all(client is made[0] for client in made)



def test_ecs_task_methods_run_one_at_a_time(executing: None) -> None:
    """While the agent is inside stop_task, a Map iteration's run_task waits for it to finish."""
    from moto.ecs.models import EC2ContainerServiceBackend

    ecs = boto3.client("ecs", region_name=REGION)
    ecs.create_cluster(clusterName="c")
    ecs.register_task_definition(family="f", containerDefinitions=[{"name": "k", "image": "i", "memory": 512}])
    [task] = ecs.run_task(cluster="c", taskDefinition="f", launchType="FARGATE")["tasks"]
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []
    original = EC2ContainerServiceBackend._get_cluster

    def held_get_cluster(self: Any, name: str) -> Any:
        if threading.current_thread().name == "agent":
            inside.set()
            release.wait(10)
            order.append("stop")
        return original(self, name)

    def run() -> None:
        ecs.run_task(cluster="c", taskDefinition="f", launchType="FARGATE")
        order.append("run")

    try:
        EC2ContainerServiceBackend._get_cluster = held_get_cluster  # type: ignore[method-assign]
        agent = threading.Thread(target=lambda: ecs.stop_task(cluster="c", task=task["taskArn"]), name="agent")
        agent.start()
        assert inside.wait(10)
        iteration = threading.Thread(target=run)
        iteration.start()
        iteration.join(0.3)  # it cannot get in while the agent is inside
        release.set()
        agent.join()
        iteration.join()
    finally:
        EC2ContainerServiceBackend._get_cluster = original  # type: ignore[method-assign]
    assert order == ["stop", "run"]


def test_listing_object_versions_copies_no_contents(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shim 6: ListObjectVersions answers as before (latest flags, ETags, sizes, delete markers, the
    prefix) without reading any object's bytes, and the originals stay readable after the listing's
    copies are collected (a copy sharing a key's buffer would close it)."""
    import gc

    from moto.s3.models import FakeKey

    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="kpipe-shim")
        s3.put_bucket_versioning(Bucket="kpipe-shim", VersioningConfiguration={"Status": "Enabled"})
        first = s3.put_object(Bucket="kpipe-shim", Key="raw-data/a.csv", Body=b"id\n1\n")
        second = s3.put_object(Bucket="kpipe-shim", Key="raw-data/a.csv", Body=b"id\n1\n2\n")
        s3.put_object(Bucket="kpipe-shim", Key="raw-data/gone.csv", Body=b"x")
        s3.delete_object(Bucket="kpipe-shim", Key="raw-data/gone.csv")
        s3.put_object(Bucket="kpipe-shim", Key="archived/big.csv", Body=b"y" * 100_000)
        reads = []
        value = FakeKey.value
        monkeypatch.setattr(FakeKey, "value", property(lambda key: reads.append(key.name) or value.fget(key), value.fset))
        listed = s3.list_object_versions(Bucket="kpipe-shim", Prefix="raw-data/")
        monkeypatch.setattr(FakeKey, "value", value)
        assert reads == []
        versions = [(v["Key"], v["VersionId"], v["IsLatest"], v["ETag"], v["Size"]) for v in listed["Versions"]]
        assert versions == [
            ("raw-data/a.csv", second["VersionId"], True, second["ETag"], 7),
            ("raw-data/a.csv", first["VersionId"], False, first["ETag"], 5),
            ("raw-data/gone.csv", versions[2][1], False, versions[2][3], 1),
        ]
        assert [(m["Key"], m["IsLatest"]) for m in listed["DeleteMarkers"]] == [("raw-data/gone.csv", True)]
        gc.collect()
        assert s3.get_object(Bucket="kpipe-shim", Key="raw-data/a.csv")["Body"].read() == b"id\n1\n2\n"
        assert s3.get_object(Bucket="kpipe-shim", Key="raw-data/a.csv", VersionId=first["VersionId"])["Body"].read() == b"id\n1\n"
        assert len(s3.get_object(Bucket="kpipe-shim", Key="archived/big.csv")["Body"].read()) == 100_000


def test_concurrent_starts_with_one_name_start_one_execution(executing: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten threads start an execution of the same name at once (duplicate S3 events): one starts, nine
    get ExecutionAlreadyExists, as on AWS. The state machine's deep copy between moto's name check and
    its registration is slowed down, so without the shim every thread would pass the check."""
    from moto.stepfunctions.parser import models

    real_deepcopy = models.copy.deepcopy

    def slow_deepcopy(*args: Any) -> Any:
        time.sleep(0.05)
        return real_deepcopy(*args)

    monkeypatch.setattr(models.copy, "deepcopy", slow_deepcopy)
    sfn = boto3.client("stepfunctions", region_name=REGION)
    definition = json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 1, "End": True}}})
    machine = sfn.create_state_machine(name="storm", definition=definition, roleArn=ROLE)["stateMachineArn"]
    outcomes: list[str] = []

    def start(nonce: int) -> None:
        try:
            sfn.start_execution(stateMachineArn=machine, name="b-1", input=json.dumps({"nonce": nonce}))
            outcomes.append("started")
        except sfn.exceptions.ExecutionAlreadyExists:
            outcomes.append("duplicate")

    threads = [threading.Thread(target=start, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["duplicate"] * 9 + ["started"]
    assert len(sfn.list_executions(stateMachineArn=machine)["executions"]) == 1
