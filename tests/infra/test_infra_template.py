"""The template and its rendering, offline: cfn-lint, the contract names, the state machine wiring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from cfnlint.api import ManualArgs, lint
from moto import mock_aws

from kpipe import infra
from tests.infra.support import REGION, ROOT, contract_env, contract_placeholders, contract_stack_names

TASKS = {"Validate": "validate", "Transform": "transform", "Finalize": "finalize"}


def test_cfn_lint_passes_on_the_rendered_template(asl_path: Path) -> None:
    """Errors, warnings and informational findings all count. (The emulator's rendering is not for AWS;
    test_emulator_rendering_is_the_same_substitution ties it to this one.)"""
    text = infra.render_template(asl_path=asl_path)
    findings = [str(m) for m in lint(text, config=ManualArgs(regions=["us-east-1"], include_checks=["I"]))]
    assert findings == []


def test_template_yaml_holds_no_copy_of_the_definition() -> None:
    raw = infra.load_template()
    sm = raw["Resources"][infra.STATE_MACHINE_ID]["Properties"]
    assert sm["DefinitionString"] == infra.ASL_MARKER
    assert "StartAt" not in (ROOT / "infra" / "template.yaml").read_text()


def test_rendering_inlines_the_asl_and_substitutes_by_reference(rendered: dict[str, Any], asl_path: Path) -> None:
    sm = rendered["Resources"][infra.STATE_MACHINE_ID]["Properties"]
    assert json.loads(sm["DefinitionString"]) == json.loads(asl_path.read_text())
    subs = sm["DefinitionSubstitutions"]
    assert set(subs) == contract_placeholders()
    for key, value in subs.items():
        if key == "ContainerName":
            assert value == "kpipe"
        else:  # an ARN or name from this stack or its parameters, never a literal copied in
            assert isinstance(value, dict) and set(value) <= {"Ref", "Fn::GetAtt"}, (key, value)
    assert subs["ClusterArn"] == {"Fn::GetAtt": ["Cluster", "Arn"]}
    for name in TASKS:
        assert subs[f"{name}TaskDefinitionArn"] == {"Ref": f"{name}TaskDefinition"}
    assert subs["ControlTableName"] == {"Ref": "ControlTable"}
    for param in ("SubnetA", "SubnetB", "SecurityGroupId"):
        assert subs[param] == {"Ref": param}


def test_the_asl_uses_exactly_the_contract_placeholders(asl_path: Path) -> None:
    assert infra.placeholders(asl_path.read_text()) == contract_placeholders()


def test_render_refuses_a_placeholder_the_template_does_not_substitute(tmp_path: Path, asl_path: Path) -> None:
    asl = json.loads(asl_path.read_text())
    asl["Comment"] = "uses ${NotSubstituted}"
    bad = tmp_path / "bad.asl.json"
    bad.write_text(json.dumps(asl))
    with pytest.raises(ValueError, match="NotSubstituted"):
        infra.render_template(asl_path=bad)


def test_emulator_template_is_the_same_stack(rendered: dict[str, Any]) -> None:
    """What the emulator deploys is this rendering plus one output per substitution (the very
    expressions, so moto's CloudFormation evaluates them) and the two moto adaptations."""
    emulator = infra.emulator_template(rendered, "kpipe-local", {"OrderKPI": "p-OrderKPI"})
    subs = rendered["Resources"][infra.STATE_MACHINE_ID]["Properties"]["DefinitionSubstitutions"]
    extra = {k: v for k, v in emulator["Outputs"].items() if k not in rendered["Outputs"]}
    assert extra == {infra.SUBSTITUTION_OUTPUT + k: {"Value": v} for k, v in subs.items()}
    assert emulator["Resources"]["TaskRepository"]["Properties"].pop("RepositoryName") == "kpipe-local-taskrepository"
    # the KPI tables' names as the values they evaluate to (given, or under the parameters' defaults)
    names = {"OrderKPI": "p-OrderKPI", "CategoryKPI": "CategoryKPI"}
    assert json.loads(emulator["Outputs"]["KpiTables"].pop("Value")) == names
    rendered_outputs = json.loads(json.dumps(rendered["Outputs"]))
    del rendered_outputs["KpiTables"]["Value"]
    for logical_id, name in (("OrderKpiTable", "OrderKPI"), ("CategoryKpiTable", "CategoryKPI")):
        props = emulator["Resources"][logical_id]["Properties"]
        assert props["TableName"] == names[name]
        props["TableName"] = rendered["Resources"][logical_id]["Properties"]["TableName"]
    for name in TASKS:
        props = emulator["Resources"][f"{name}TaskDefinition"]["Properties"]
        camel = props["ContainerDefinitions"][0]
        pascal = rendered["Resources"][f"{name}TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
        assert camel["command"] == pascal["Command"] and camel["image"] == pascal["Image"]
        env = {e["name"]: e["value"] for e in camel["environment"]}
        assert json.loads(env["KPIPE_KPI_TABLES"]) == names
        props["ContainerDefinitions"] = [pascal]
    for key in extra:
        del emulator["Outputs"][key]
    assert emulator["Outputs"] == rendered_outputs
    assert emulator["Resources"] == rendered["Resources"]


def test_rendered_template_fits_an_inline_body(asl_path: Path) -> None:
    assert len(infra.render_template(asl_path=asl_path).encode()) < infra.MAX_TEMPLATE_BODY
    emulator = infra.emulator_template(infra.render_template_dict(asl_path=asl_path), "kpipe-local")
    assert len(json.dumps(emulator, separators=(",", ":")).encode()) < infra.MAX_TEMPLATE_BODY


def test_parameters_and_outputs_follow_the_contract(rendered: dict[str, Any]) -> None:
    params, outputs = contract_stack_names()
    assert params and outputs
    assert set(params) <= set(rendered["Parameters"])
    assert set(outputs) <= set(rendered["Outputs"])
    # every parameter beyond the contract has a default, so the contract's set is enough to deploy
    for name in set(rendered["Parameters"]) - set(params) - {"BucketName", "AlarmEmail", "ImageUri"}:
        assert "Default" in rendered["Parameters"][name], name


def test_tables_keys_and_index(rendered: dict[str, Any]) -> None:
    res = rendered["Resources"]
    params = rendered["Parameters"]

    def keys(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
        return [(k["AttributeName"], k["KeyType"]) for k in schema]

    cat, order, control = (
        res["CategoryKpiTable"]["Properties"],
        res["OrderKpiTable"]["Properties"],
        res["ControlTable"]["Properties"],
    )
    # <KpiTablePrefix><table> (default prefix: none), or the older per-table parameter when it is set
    assert cat["TableName"] == {
        "Fn::If": ["HasCategoryTableName", {"Ref": "CategoryTableName"}, {"Fn::Sub": "${KpiTablePrefix}CategoryKPI"}]
    }
    assert order["TableName"]["Fn::If"][2] == {"Fn::Sub": "${KpiTablePrefix}OrderKPI"}
    assert params["KpiTablePrefix"]["Default"] == params["OrderTableName"]["Default"] == ""
    assert params[control["TableName"]["Ref"]]["Default"] == "KpipeControl"
    for logical_id in ("CategoryKpiTable", "OrderKpiTable"):
        assert (res[logical_id]["DeletionPolicy"], res[logical_id]["UpdateReplacePolicy"]) == ("Retain", "Retain")
    assert keys(cat["KeySchema"]) == [("category", "HASH"), ("order_date", "RANGE")]
    (gsi,) = cat["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == "order_date-index"
    assert keys(gsi["KeySchema"]) == [("order_date", "HASH"), ("category", "RANGE")]
    assert gsi["Projection"] == {"ProjectionType": "ALL"}
    assert keys(order["KeySchema"]) == [("order_date", "HASH")]
    assert keys(control["KeySchema"]) == [("pk", "HASH")]
    for table in (cat, order, control):
        assert table["BillingMode"] == "PAY_PER_REQUEST"
        assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_bucket_is_versioned_encrypted_private_with_lifecycle(rendered: dict[str, Any]) -> None:
    bucket = rendered["Resources"]["PipelineBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    prefixes = {r.get("Prefix") for r in bucket["LifecycleConfiguration"]["Rules"]}
    assert {"archived/", "rejected/"} <= prefixes


def test_task_definitions(rendered: dict[str, Any]) -> None:
    res = rendered["Resources"]
    contract_vars = {v for v in contract_env() if v not in {"KPIPE_STATE_MACHINE_ARN", "AWS_ENDPOINT_URL"}}
    per_run = {"KPIPE_BATCH_ID", "KPIPE_MANIFEST_KEY", "KPIPE_TASK_TOKEN"}  # container overrides
    for logical, task in TASKS.items():
        props = res[f"{logical}TaskDefinition"]["Properties"]
        assert props["Family"] == f"kpipe-{task}"
        assert props["RequiresCompatibilities"] == ["FARGATE"] and props["NetworkMode"] == "awsvpc"
        assert props["Cpu"] == {"Ref": "TaskCpu"} and props["Memory"] == {"Ref": "TaskMemory"}
        (container,) = props["ContainerDefinitions"]
        assert container["Name"] == "kpipe"
        assert container["Command"] == ["python", "-m", f"ecs_tasks.{task}"]
        assert container["Memory"] == {"Ref": "TaskMemory"}  # moto's run_task needs container-level memory
        assert {e["Name"] for e in container["Environment"]} >= contract_vars - per_run
        log = container["LogConfiguration"]
        assert log["LogDriver"] == "awslogs" and log["Options"]["awslogs-group"] == {"Ref": "TaskLogGroup"}
    assert res["TaskLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_alarms_publish_to_the_topic(rendered: dict[str, Any]) -> None:
    res = rendered["Resources"]
    alarms = {k: v["Properties"] for k, v in res.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    metrics = {
        (a["Namespace"] if isinstance(a["Namespace"], str) else "custom", a["MetricName"]) for a in alarms.values()
    }
    assert ("AWS/States", "ExecutionsFailed") in metrics
    assert ("custom", "TaskFailures") in metrics
    filters = [v["Properties"] for v in res.values() if v["Type"] == "AWS::Logs::MetricFilter"]
    assert {f["MetricTransformations"][0]["MetricName"] for f in filters} == {"TaskFailures"}
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    subscription = res["AlarmTopic"]["Properties"]["Subscription"]["Fn::If"][1][0]
    assert subscription == {"Endpoint": {"Ref": "AlarmEmail"}, "Protocol": "email"}


def test_cli_render_writes_the_same_template(tmp_path: Path, asl_path: Path) -> None:
    out = tmp_path / "t.json"
    assert infra.main(["render", "--asl", str(asl_path), "--out", str(out)]) == 0
    assert out.read_text() == infra.render_template(asl_path=asl_path)


def test_template_yaml_parses_with_plain_cfn_tags() -> None:
    """The loader maps every short form the template uses (no unknown-tag errors, no tags left)."""
    text = (ROOT / "infra" / "template.yaml").read_text()
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(text)  # plain YAML cannot read it: the short forms need kpipe.infra's loader
    assert '"!' not in json.dumps(infra.load_template())


def test_is_emulated() -> None:
    """The emulator rendering is chosen for moto's in-process mock and for non-AWS endpoints only."""
    aws = boto3.client("cloudformation", region_name=REGION)
    local = boto3.client("cloudformation", region_name=REGION, endpoint_url="http://127.0.0.1:5000")
    assert not infra.is_emulated(aws)
    assert infra.is_emulated(local)
    with mock_aws():
        assert infra.is_emulated(boto3.client("cloudformation", region_name=REGION))


def test_moto_adaptation_camel_cases_container_keys_but_not_intrinsics() -> None:
    template = {
        "Resources": {
            "Repo": {"Type": "AWS::ECR::Repository", "Properties": {}},
            "Td": {
                "Type": "AWS::ECS::TaskDefinition",
                "Properties": {
                    "Family": "f",
                    "ContainerDefinitions": [
                        {
                            "Name": "kpipe",
                            "Image": {"Fn::If": ["C", {"Ref": "ImageUri"}, "x"]},
                            "Environment": [{"Name": "A", "Value": {"Ref": "B"}}],
                            "LogConfiguration": {"LogDriver": "awslogs", "Options": {"awslogs-group": {"Ref": "G"}}},
                        }
                    ],
                },
            },
        }
    }
    infra._adapt_for_moto(template, "Kpipe-Dev")
    assert template["Resources"]["Repo"]["Properties"]["RepositoryName"] == "kpipe-dev-repo"
    props = template["Resources"]["Td"]["Properties"]
    assert props["Family"] == "f"
    assert props["ContainerDefinitions"] == [
        {
            "name": "kpipe",
            "image": {"Fn::If": ["C", {"Ref": "ImageUri"}, "x"]},
            "environment": [{"name": "A", "value": {"Ref": "B"}}],
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": {"Ref": "G"}}},
        }
    ]
