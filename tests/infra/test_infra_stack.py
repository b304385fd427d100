"""The rendered template deployed into moto's CloudFormation (as `kpipe run`'s emulator does): the
stack creates what the pipeline needs, and the state machine's definition is the ASL file with the
stack's ARNs substituted exactly as Step Functions' DefinitionSubstitutions would."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from moto import mock_aws

from kpipe import infra
from tests.infra.support import REGION, STACK_NAME, contract_stack_names


def test_outputs_name_every_contract_output(moto_stack: dict[str, Any]) -> None:
    _, names = contract_stack_names()
    assert set(names) <= set(moto_stack["outputs"])
    assert all(moto_stack["outputs"][n] for n in names)


def expected_definition(outputs: dict[str, str], params: dict[str, str], asl_text: str) -> str:
    """What Step Functions makes of the template's DefinitionSubstitutions for this stack, spelled out
    independently of kpipe.infra: the ARNs and names from the outputs, the networking parameters."""
    values = {
        "ClusterArn": outputs["ClusterArn"],
        "ValidateTaskDefinitionArn": outputs["ValidateTaskDefinitionArn"],
        "TransformTaskDefinitionArn": outputs["TransformTaskDefinitionArn"],
        "FinalizeTaskDefinitionArn": outputs["FinalizeTaskDefinitionArn"],
        "ContainerName": "kpipe",
        "SubnetA": params["SubnetA"],
        "SubnetB": params["SubnetB"],
        "SecurityGroupId": params["SecurityGroupId"],
        "ControlTableName": outputs["ControlTableName"],
    }
    text = json.dumps(json.loads(asl_text), separators=(",", ":"))
    for key, value in values.items():
        text = text.replace("${" + key + "}", value)
    return text


def test_state_machine_definition_is_the_asl_with_substitutions(moto_stack: dict[str, Any]) -> None:
    out, params, clients = moto_stack["outputs"], moto_stack["params"], moto_stack["clients"]
    described = clients["stepfunctions"].describe_state_machine(stateMachineArn=out["StateMachineArn"])
    asl_text = moto_stack["asl_path"].read_text()
    assert described["definition"] == expected_definition(out, params, asl_text)
    assert "${" not in described["definition"]
    # the context paths survive (the reason Fn::Sub's list form is not used for moto)
    assert described["definition"].count("$$.") == infra.compact_asl(asl_text).count("$$.")
    assert json.loads(described["definition"])["StartAt"] == json.loads(asl_text)["StartAt"]
    role = described["roleArn"].rsplit("/", 1)[-1]
    assert clients["iam"].get_role(RoleName=role)["Role"]["Arn"] == described["roleArn"]
    assert not any(k.startswith(infra.SUBSTITUTION_OUTPUT) for k in out)


def test_bucket_versioned_encrypted_private_with_lifecycle(moto_stack: dict[str, Any]) -> None:
    s3, bucket = moto_stack["clients"]["s3"], moto_stack["outputs"]["BucketName"]
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    lifecycle = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert lifecycle["rejected-expire"]["Filter"] == {"Prefix": "rejected/"}
    assert lifecycle["archived-to-infrequent-access"]["Filter"] == {"Prefix": "archived/"}


def test_tables_with_keys_index_billing_and_pitr(moto_stack: dict[str, Any]) -> None:
    ddb, out = moto_stack["clients"]["dynamodb"], moto_stack["outputs"]

    def describe(name: str) -> dict[str, Any]:
        return ddb.describe_table(TableName=name)["Table"]

    def keys(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
        return [(k["AttributeName"], k["KeyType"]) for k in schema]

    assert (out["CategoryTableName"], out["OrderTableName"], out["ControlTableName"]) == (
        "CategoryKPI",
        "OrderKPI",
        "KpipeControl",
    )
    cat = describe(out["CategoryTableName"])
    assert keys(cat["KeySchema"]) == [("category", "HASH"), ("order_date", "RANGE")]
    (gsi,) = cat["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == "order_date-index"
    assert keys(gsi["KeySchema"]) == [("order_date", "HASH"), ("category", "RANGE")]
    assert gsi["Projection"]["ProjectionType"] == "ALL"
    assert keys(describe(out["OrderTableName"])["KeySchema"]) == [("order_date", "HASH")]
    assert keys(describe(out["ControlTableName"])["KeySchema"]) == [("pk", "HASH")]
    for name in (out["CategoryTableName"], out["OrderTableName"], out["ControlTableName"]):
        assert describe(name)["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        pitr = ddb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
        assert pitr["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
    # the GSI answers the API's by-date query
    ddb.put_item(TableName="CategoryKPI", Item={"category": {"S": "Tops"}, "order_date": {"S": "2025-03-01"}})
    found = ddb.query(
        TableName="CategoryKPI",
        IndexName="order_date-index",
        KeyConditionExpression="order_date = :d",
        ExpressionAttributeValues={":d": {"S": "2025-03-01"}},
    )["Items"]
    assert [i["category"]["S"] for i in found] == ["Tops"]


def test_cluster_and_task_definitions(moto_stack: dict[str, Any]) -> None:
    ecs, out = moto_stack["clients"]["ecs"], moto_stack["outputs"]
    (cluster,) = ecs.describe_clusters(clusters=[out["ClusterArn"]])["clusters"]
    assert cluster["status"] == "ACTIVE"
    assert json.loads(out["KpiTables"]) == {"OrderKPI": out["OrderTableName"], "CategoryKPI": out["CategoryTableName"]}
    env_expected = {
        "KPIPE_BUCKET": out["BucketName"],
        "KPIPE_KPI_TABLES": out["KpiTables"],
        "KPIPE_CONTROL_TABLE": out["ControlTableName"],
        "KPIPE_CONFIG_KEY": "config/pipeline.yaml",
    }
    for task in ("validate", "transform", "finalize"):
        arn = out[f"{task.capitalize()}TaskDefinitionArn"]
        td = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
        assert td["family"] == f"kpipe-{task}"
        (container,) = td["containerDefinitions"]
        assert container["name"] == "kpipe"
        assert container["command"] == ["python", "-m", f"ecs_tasks.{task}"]
        assert container["memory"] == 2048
        assert container["image"] == f"{out['RepositoryUri']}:latest"
        env = {e["name"]: e["value"] for e in container["environment"]}
        assert env_expected.items() <= env.items()
        assert container["logConfiguration"]["options"]["awslogs-group"] == out["TaskLogGroupName"]
    logs = moto_stack["clients"]["logs"]
    (group,) = logs.describe_log_groups(logGroupNamePrefix=out["TaskLogGroupName"])["logGroups"]
    assert group["retentionInDays"] == 30


def test_repository_topic_and_subscription(moto_stack: dict[str, Any]) -> None:
    out, clients = moto_stack["outputs"], moto_stack["clients"]
    name = out["RepositoryUri"].split("/", 1)[1]
    assert (
        clients["ecr"].describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"]
        == (out["RepositoryUri"])
    )
    subs = clients["sns"].list_subscriptions_by_topic(TopicArn=out["AlarmTopicArn"])["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subs] == [("email", "ops@example.com")]


def test_update_pins_the_image_and_keeps_data(moto_stack: dict[str, Any]) -> None:
    """A second deploy (make deploy's image step) changes only what it names; parameters it leaves out
    keep their values, the bucket and the tables keep their data."""
    out, clients = moto_stack["outputs"], moto_stack["clients"]
    s3, ddb = clients["s3"], clients["dynamodb"]
    s3.put_object(Bucket=out["BucketName"], Key="raw-data/products.csv", Body=b"id\n1\n")
    ddb.put_item(TableName=out["OrderTableName"], Item={"order_date": {"S": "2025-03-02"}})
    image = f"{out['RepositoryUri']}:abc123"
    new = infra.deploy_stack(
        clients["cloudformation"], STACK_NAME, {"ImageUri": image}, asl_path=moto_stack["asl_path"], poll_seconds=0
    )
    assert new["BucketName"] == out["BucketName"]
    assert new["ValidateTaskDefinitionArn"] != out["ValidateTaskDefinitionArn"]
    td = clients["ecs"].describe_task_definition(taskDefinition=new["ValidateTaskDefinitionArn"])["taskDefinition"]
    assert td["containerDefinitions"][0]["image"] == image
    definition = clients["stepfunctions"].describe_state_machine(stateMachineArn=new["StateMachineArn"])["definition"]
    assert definition == expected_definition(new, moto_stack["params"], moto_stack["asl_path"].read_text())
    assert out["ValidateTaskDefinitionArn"] not in definition
    assert {k: new[k] for k in ("OrderTableName", "CategoryTableName", "ControlTableName", "TaskLogGroupName")} == {
        k: out[k] for k in ("OrderTableName", "CategoryTableName", "ControlTableName", "TaskLogGroupName")
    }
    assert new.keys() == out.keys()
    params = {
        p["ParameterKey"]: p["ParameterValue"]
        for p in clients["cloudformation"].describe_stacks(StackName=STACK_NAME)["Stacks"][0]["Parameters"]
    }
    assert params["SubnetA"] == moto_stack["params"]["SubnetA"]
    assert params["AlarmEmail"] == "ops@example.com"
    assert s3.get_object(Bucket=out["BucketName"], Key="raw-data/products.csv")["Body"].read() == b"id\n1\n"
    assert ddb.get_item(TableName=out["OrderTableName"], Key={"order_date": {"S": "2025-03-02"}}).get("Item")
    moto_stack["outputs"] = new


def test_unknown_parameter_is_refused(moto_stack: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="NoSuchParam"):
        infra.deploy_stack(
            moto_stack["clients"]["cloudformation"], STACK_NAME, {"NoSuchParam": "x"}, asl_path=moto_stack["asl_path"]
        )


def test_cli_deploy_outputs_and_destroy(
    tmp_path: Any, asl_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """What `make deploy-stack` / `make destroy` run, end to end on moto."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        subnet, sg = "subnet-0ddddddddddddddd4", "sg-0eeeeeeeeeeeeeee5"
        outputs_file = tmp_path / "outputs.json"
        argv = ["deploy", "--stack-name", "kpipe-cli", "--asl", str(asl_path), "--outputs-file", str(outputs_file)]
        argv += ["--param", f"SubnetA={subnet}", "--param", f"SubnetB={subnet}", "--param", f"SecurityGroupId={sg}"]
        argv += ["--param", "OrderTableName=OrderKPI-cli", "--param", "CategoryTableName=CategoryKPI-cli"]
        argv += ["--param", "ControlTableName=KpipeControl-cli"]
        assert infra.main(argv) == 0
        outputs = json.loads(outputs_file.read_text())
        assert outputs["OrderTableName"] == "OrderKPI-cli"
        capsys.readouterr()
        assert infra.main(["outputs", "--stack-name", "kpipe-cli", "--key", "BucketName"]) == 0
        assert capsys.readouterr().out.strip() == outputs["BucketName"]
        s3 = boto3.client("s3", region_name=REGION)
        for body in (b"1", b"2"):  # two versions and, below, a delete marker
            s3.put_object(Bucket=outputs["BucketName"], Key="raw-data/products.csv", Body=body)
        s3.delete_object(Bucket=outputs["BucketName"], Key="raw-data/products.csv")
        assert infra.main(["destroy", "--stack-name", "kpipe-cli"]) == 0
        assert infra.stack_status(boto3.client("cloudformation", region_name=REGION), "kpipe-cli") is None
        assert infra.main(["outputs", "--stack-name", "kpipe-cli"]) == 1
