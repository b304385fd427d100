"""Shared moto fixtures for the functional tier: the pipeline bucket, the three tables, a state machine.

Everything here is real boto3 against moto's in-process backends (`mock_aws`, process-global, so threads
share it). The shapes follow docs/contracts.md exactly; other suites reuse these fixtures, so each one
does one thing and they compose:

    aws_credentials -> moto -> s3 / sfn / dynamodb -> pipeline_bucket / kpi_tables / state_machine_arn
                                                    -> kpipe_env (all of it + the KPIPE_* env) -> chalice_client
    shared_kpipe_env -> shared_chalice_client: the same, once per module (see shared_kpipe_env)

Nothing here touches a real AWS account: credentials are fake and AWS_ENDPOINT_URL/AWS_PROFILE are unset.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client
from moto import mock_aws

from chalicelib import aws, trigger
from chalicelib.config import PipelineConfig, default_config_path, load_config
from chalicelib.kpi_tables import TableShape, table_shapes

REGION = "us-east-1"
BUCKET = "kpipe-local"  # app.py's default bucket, so the decorator and the fixtures agree
ORDER_TABLE = "OrderKPI"
CATEGORY_TABLE = "CategoryKPI"
CONTROL_TABLE = "KpipeControl"
CATEGORY_DATE_INDEX = "order_date-index"
CONFIG_KEY = "config/pipeline.yaml"
EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"

# A trivial stand-in for the real pipeline (stepfunctions/pipeline.asl.json belongs to its own tests).
PASS_DEFINITION = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})


def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region; no endpoint or profile leaks in from the developer's shell."""
    _fake_credentials(monkeypatch)


@pytest.fixture
def moto(aws_credentials: None) -> Iterator[None]:
    """moto for the test's duration. The cached clients of chalicelib.aws and the config cache are
    dropped on both sides, so no client or config survives from one test's backends into the next."""
    aws.reset()
    trigger.clear_config_cache()
    with mock_aws():
        yield
    aws.reset()
    trigger.clear_config_cache()


@pytest.fixture
def s3(moto: None) -> Any:
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def sfn(moto: None) -> Any:
    return boto3.client("stepfunctions", region_name=REGION)


@pytest.fixture
def dynamodb(moto: None) -> Any:
    return boto3.resource("dynamodb", region_name=REGION)


def create_pipeline_bucket(s3: Any) -> str:
    """The pipeline bucket, versioned (the manifest pins object versions), with the repo's pipeline.yaml
    uploaded at config/pipeline.yaml, where the Lambda reads it."""
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=BUCKET, Key=CONFIG_KEY, Body=default_config_path().read_bytes())
    return BUCKET


@pytest.fixture
def pipeline_bucket(s3: Any) -> str:
    return create_pipeline_bucket(s3)


def create_shape_table(dynamodb: Any, shape: TableShape, name: str | None = None) -> Any:
    """A KPI table as its shape (chalicelib.kpi_tables, what the template renders) declares it."""
    extra = {"GlobalSecondaryIndexes": shape.index_definitions()} if shape.indexes else {}
    return dynamodb.create_table(
        TableName=name or shape.name,
        KeySchema=shape.key_schema(),
        AttributeDefinitions=shape.attribute_definitions(),
        BillingMode="PAY_PER_REQUEST",
        **extra,
    )


def create_config_tables(dynamodb: Any, cfg: PipelineConfig) -> dict[str, Any]:
    """Every KPI table of a config, under its logical name."""
    return {name: create_shape_table(dynamodb, shape) for name, shape in table_shapes(cfg).items()}


def create_kpi_tables(dynamodb: Any) -> dict[str, Any]:
    """OrderKPI, CategoryKPI (+ GSI order_date-index) from the project's pipeline.yaml, and KpipeControl, as
    docs/contracts.md pins them (tests/unit/test_kpi_tables.py holds the shapes to the contract)."""
    tables = create_config_tables(dynamodb, load_config(default_config_path()))
    control = dynamodb.create_table(
        TableName=CONTROL_TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return {ORDER_TABLE: tables[ORDER_TABLE], CATEGORY_TABLE: tables[CATEGORY_TABLE], CONTROL_TABLE: control}


@pytest.fixture
def kpi_tables(dynamodb: Any) -> dict[str, Any]:
    """The three tables as boto3 Table resources, by name."""
    return create_kpi_tables(dynamodb)


def create_state_machine(sfn: Any) -> str:
    """A Pass state machine. moto leaves its executions RUNNING (not executed), which is what trigger
    tests want: they count executions and names, and stop_execution stands in for a failed attempt."""
    response = sfn.create_state_machine(
        name="kpipe-pipeline",
        definition=PASS_DEFINITION,
        roleArn="arn:aws:iam::123456789012:role/kpipe-sfn",
    )
    return str(response["stateMachineArn"])


@pytest.fixture
def state_machine_arn(sfn: Any) -> str:
    return create_state_machine(sfn)


@dataclass(frozen=True)
class KpipeEnv:
    """Everything the app needs, created and exported as the Lambda would see it."""

    bucket: str
    state_machine_arn: str
    tables: dict[str, Any]
    s3: Any
    sfn: Any
    dynamodb: Any
    region: str = REGION
    config_key: str = CONFIG_KEY

    def executions(self) -> list[dict[str, Any]]:
        paginator = self.sfn.get_paginator("list_executions")
        pages = paginator.paginate(stateMachineArn=self.state_machine_arn)
        return [e for page in pages for e in page["executions"]]

    def put(self, key: str, body: bytes | str = b"x\n") -> str:
        """Upload an object (as a user would); returns its version id."""
        data = body.encode() if isinstance(body, str) else body
        return str(self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)["VersionId"])


@pytest.fixture
def kpipe_env(
    monkeypatch: pytest.MonkeyPatch,
    pipeline_bucket: str,
    state_machine_arn: str,
    kpi_tables: dict[str, Any],
    s3: Any,
    sfn: Any,
    dynamodb: Any,
) -> KpipeEnv:
    _set_kpipe_env(monkeypatch, pipeline_bucket, state_machine_arn)
    return KpipeEnv(pipeline_bucket, state_machine_arn, kpi_tables, s3, sfn, dynamodb)


def _set_kpipe_env(monkeypatch: pytest.MonkeyPatch, bucket: str, state_machine_arn: str) -> None:
    for name, value in {
        "KPIPE_BUCKET": bucket,
        "KPIPE_STATE_MACHINE_ARN": state_machine_arn,
        "KPIPE_ORDER_TABLE": ORDER_TABLE,
        "KPIPE_CATEGORY_TABLE": CATEGORY_TABLE,
        "KPIPE_CONTROL_TABLE": CONTROL_TABLE,
        "KPIPE_CONFIG_KEY": CONFIG_KEY,
    }.items():
        monkeypatch.setenv(name, value)


def _client(project_dir: Path) -> Client:
    from app import app

    return Client(app, stage_name="test", project_dir=str(project_dir))


@pytest.fixture
def chalice_client(kpipe_env: KpipeEnv, tmp_path: Path) -> Client:
    """chalice's test client on app.py. Its project dir is an empty temp dir, so no stage environment from
    .chalice/config.json overrides the moto env set by `kpipe_env`."""
    return _client(tmp_path)


@contextmanager
def kpipe_stack() -> Iterator[KpipeEnv]:
    """The whole `kpipe_env` as a context manager, for wider scopes than one test."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _fake_credentials(monkeypatch)
        aws.reset()
        trigger.clear_config_cache()
        try:
            with mock_aws():
                s3 = boto3.client("s3", region_name=REGION)
                sfn = boto3.client("stepfunctions", region_name=REGION)
                dynamodb = boto3.resource("dynamodb", region_name=REGION)
                bucket, arn = create_pipeline_bucket(s3), create_state_machine(sfn)
                tables = create_kpi_tables(dynamodb)
                _set_kpipe_env(monkeypatch, bucket, arn)
                yield KpipeEnv(bucket, arn, tables, s3, sfn, dynamodb)
        finally:
            aws.reset()
            trigger.clear_config_cache()


@pytest.fixture(scope="module")
def shared_kpipe_env() -> Iterator[KpipeEnv]:
    """One `kpipe_env` for a whole module, for read-mostly suites (the API tests) where per-test setup would
    dominate the run time. A module using it must not also use the function-scoped moto fixtures (moto's
    backends are process-global) and its tests must not depend on each other's writes."""
    with kpipe_stack() as env:
        yield env


@pytest.fixture(scope="module")
def shared_chalice_client(shared_kpipe_env: KpipeEnv, tmp_path_factory: pytest.TempPathFactory) -> Client:
    return _client(tmp_path_factory.mktemp("chalice-project"))


@pytest.fixture
def load_event() -> Callable[..., dict[str, Any]]:
    """Load tests/events/<name>.json; `bucket=` rewrites every record's bucket name and ARN."""

    def load(name: str, *, bucket: str | None = None) -> dict[str, Any]:
        event: dict[str, Any] = json.loads((EVENTS_DIR / f"{name}.json").read_text(encoding="utf-8"))
        if bucket is not None:
            for record in event.get("Records", []):
                record["s3"]["bucket"]["name"] = bucket
                record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
        return event

    return load
