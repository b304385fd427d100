"""The chalice stages: `.chalice/config.json` and the per-stage policies written from stack outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import write_stage_config as wsc
from tests.infra.support import ROOT, contract_env

CHALICE = ROOT / ".chalice"


def config() -> dict[str, Any]:
    return json.loads((CHALICE / "config.json").read_text())


def test_config_has_dev_and_prod_with_their_own_policy_files() -> None:
    cfg = config()
    assert cfg["app_name"] == "kpipe"
    assert {"dev", "prod"} <= set(cfg["stages"])
    for stage in ("dev", "prod"):
        st = cfg["stages"][stage]
        assert st["autogen_policy"] is False
        assert st["iam_policy_file"] == f"policy-{stage}.json"
        assert (CHALICE / st["iam_policy_file"]).is_file()


def test_committed_policies_are_the_generators_output() -> None:
    """Each policy file is what write_stage_config renders: for placeholder outputs as committed, or for
    the outputs a `make deploy` wrote into the stage's environment."""
    for stage in ("dev", "prod"):
        on_disk = json.loads((CHALICE / f"policy-{stage}.json").read_text())
        env = config()["stages"][stage].get("environment_variables", {})
        candidates = [wsc.lambda_policy(wsc.placeholder_outputs(stage), stage)]
        if "KPIPE_BUCKET" in env:
            deployed = {
                "BucketName": env["KPIPE_BUCKET"],
                "StateMachineArn": env["KPIPE_STATE_MACHINE_ARN"],
                "ControlTableName": env["KPIPE_CONTROL_TABLE"],
            }
            if "KPIPE_KPI_TABLES" in env:
                deployed["KpiTables"] = env["KPIPE_KPI_TABLES"]
            else:  # a stage written before KPIPE_KPI_TABLES
                deployed.update(OrderTableName=env["KPIPE_ORDER_TABLE"], CategoryTableName=env["KPIPE_CATEGORY_TABLE"])
            candidates.append(wsc.lambda_policy(deployed, stage))
        assert on_disk in candidates, f"regenerate: python infra/write_stage_config.py --stage {stage} --placeholder"


OUTPUTS = {  # as `python -m kpipe.infra outputs` prints them (a moto deployment's, trimmed)
    "BucketName": "kpipe-dev-pipelinebucket-4mxq2v1k9z0a",
    "StateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:kpipe-dev-pipeline",
    "KpiTables": '{"OrderKPI":"kpipe-dev-OrderKPI","CategoryKPI":"kpipe-dev-CategoryKPI","BrandKPI":"kpipe-dev-BrandKPI"}',
    "KpiTableIndexes": '{"OrderKPI":[],"CategoryKPI":["order_date-index"],"BrandKPI":["order_date-index"]}',
    "OrderTableName": "kpipe-dev-OrderKPI",
    "CategoryTableName": "kpipe-dev-CategoryKPI",
    "ControlTableName": "KpipeControl-dev",
    "ClusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/kpipe-dev-Cluster-1X2Y3Z",
    "RepositoryUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/kpipe-dev-taskrepository",
}


def test_write_stage_config_from_outputs(tmp_path: Path) -> None:
    chalice = tmp_path / ".chalice"
    shutil.copytree(CHALICE, chalice)
    before = json.loads((chalice / "config.json").read_text())
    outputs = OUTPUTS
    outputs_file = tmp_path / "outputs.json"
    outputs_file.write_text(json.dumps(outputs))
    assert wsc.main(["--stage", "dev", "--outputs", str(outputs_file), "--chalice-dir", str(chalice)]) == 0
    after = json.loads((chalice / "config.json").read_text())
    env = after["stages"]["dev"]["environment_variables"]
    lambda_vars = [
        v
        for v in contract_env()
        if v not in {"KPIPE_BATCH_ID", "KPIPE_MANIFEST_KEY", "KPIPE_TASK_TOKEN", "AWS_ENDPOINT_URL"}
    ]
    assert set(lambda_vars) <= set(env)
    assert env["KPIPE_BUCKET"] == outputs["BucketName"]
    assert env["KPIPE_STATE_MACHINE_ARN"] == outputs["StateMachineArn"]
    assert json.loads(env["KPIPE_KPI_TABLES"]) == json.loads(outputs["KpiTables"])
    assert "KPIPE_ORDER_TABLE" not in env and "KPIPE_CATEGORY_TABLE" not in env  # superseded, removed
    assert env["KPIPE_CONTROL_TABLE"] == outputs["ControlTableName"]
    assert env["KPIPE_CONFIG_KEY"] == "config/pipeline.yaml"
    assert after["stages"]["prod"] == before["stages"]["prod"]  # other stages untouched
    policy = json.loads((chalice / "policy-dev.json").read_text())
    assert policy == wsc.lambda_policy(outputs, "dev")
    text = json.dumps(policy)
    assert outputs["BucketName"] in text and outputs["StateMachineArn"] in text
    reads = {st["Sid"]: st["Resource"] for st in policy["Statement"] if st["Sid"].startswith("ReadKpi")}
    table = "arn:aws:dynamodb:us-east-1:123456789012:table/"
    assert reads == {
        "ReadKpis": [f"{table}kpipe-dev-{t}" for t in ("OrderKPI", "CategoryKPI", "BrandKPI")],
        "ReadKpiIndexes": [f"{table}kpipe-dev-{t}/index/order_date-index" for t in ("CategoryKPI", "BrandKPI")],
    }
    # idempotent
    assert wsc.main(["--stage", "dev", "--outputs", str(outputs_file), "--chalice-dir", str(chalice)]) == 0
    assert json.loads((chalice / "config.json").read_text()) == after


def wsc_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_outputs_of_a_stack_older_than_kpi_tables_still_work() -> None:
    older = {k: v for k, v in OUTPUTS.items() if not k.startswith("KpiTable")}
    assert wsc.kpi_tables(older) == {"OrderKPI": "kpipe-dev-OrderKPI", "CategoryKPI": "kpipe-dev-CategoryKPI"}
    assert json.loads(wsc.stage_environment(older)["KPIPE_KPI_TABLES"]) == wsc.kpi_tables(older)
    resources = {r for st in wsc.lambda_policy(older, "dev")["Statement"] for r in wsc_list(st["Resource"])}
    assert "arn:aws:dynamodb:us-east-1:123456789012:table/kpipe-dev-CategoryKPI/index/order_date-index" in resources


def test_missing_output_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chalice = tmp_path / ".chalice"
    shutil.copytree(CHALICE, chalice)
    outputs_file = tmp_path / "outputs.json"
    outputs_file.write_text(json.dumps({"BucketName": "b"}))
    assert wsc.main(["--stage", "dev", "--outputs", str(outputs_file), "--chalice-dir", str(chalice)]) == 2
    assert "StateMachineArn" in capsys.readouterr().err


def test_lambda_prefixes_are_pipeline_yaml_storage() -> None:
    storage = yaml.safe_load((ROOT / "pipeline.yaml").read_text())["storage"]
    assert (storage["raw"], storage["config"], storage["reports"]) == (
        wsc.RAW_PREFIX,
        wsc.CONFIG_PREFIX,
        wsc.REPORTS_PREFIX,
    )
