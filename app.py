"""kpipe's Chalice app: the S3 trigger and the KPI read API. Thin on purpose: logic lives in chalicelib.

AWS clients are made on first use (chalicelib.aws), never at import, so tests and the local emulator
can point them at moto. The bucket name is needed at import because chalice reads the decorator when it
deploys: export KPIPE_BUCKET before `chalice deploy`; "kpipe-local" serves tests and `chalice local`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from chalice import Chalice, Response
from chalice.app import S3Event

from chalicelib import api, aws, trigger
from chalicelib.config import PipelineConfig
from chalicelib.kpi_store import KpiStore
from chalicelib.kpi_tables import table_names_from_env
from chalicelib.layout import Layout

app = Chalice(app_name="kpipe")

RAW_PREFIX = "raw-data/"  # must equal pipeline.yaml storage.raw; S3 notifications are fixed at deploy time
BUCKET = os.environ.get("KPIPE_BUCKET", "kpipe-local")


@dataclass(frozen=True)
class Settings:
    """The runtime environment (docs/contracts.md), read per call so a test or emulator can change it."""

    bucket: str
    state_machine_arn: str
    kpi_tables: dict[str, str]  # logical -> deployed name (KPIPE_KPI_TABLES, or the older per-table variables)
    config_key: str

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            bucket=env.get("KPIPE_BUCKET", BUCKET),
            state_machine_arn=env.get("KPIPE_STATE_MACHINE_ARN", ""),
            kpi_tables=table_names_from_env(env),
            config_key=env.get("KPIPE_CONFIG_KEY", "config/pipeline.yaml"),
        )

    def require_state_machine(self) -> str:
        if not self.state_machine_arn:
            raise RuntimeError("KPIPE_STATE_MACHINE_ARN is not set; the trigger cannot start executions")
        return self.state_machine_arn


def _config(settings: Settings) -> PipelineConfig:
    return trigger.load_config_from_s3(aws.client("s3"), settings.bucket, settings.config_key)


def _store(settings: Settings) -> KpiStore:
    """Every KPI table of the pipeline.yaml in force (its shapes come from the config)."""
    return KpiStore(aws.resource("dynamodb"), _config(settings), settings.kpi_tables)


@app.on_s3_event(bucket=BUCKET, events=["s3:ObjectCreated:*"], prefix=RAW_PREFIX)
def on_raw_data(event: S3Event) -> dict[str, Any]:
    """Raw file landed: start the batch's execution when `raw-data/` holds a complete batch."""
    s = Settings.from_env()
    outcomes = trigger.handle_s3_event(
        event.to_dict(),
        aws.client("s3"),
        aws.client("stepfunctions"),
        lambda: _config(s),
        s.require_state_machine(),
        request_id=getattr(event.context, "aws_request_id", None),
    )
    return {"outcomes": [o.to_dict() for o in outcomes]}


def _query() -> dict[str, str] | None:
    request = app.current_request
    return request.query_params if request is not None else None


@app.route("/kpis/orders/{date}", methods=["GET"])
def get_order_kpi(date: str) -> dict[str, Any]:
    return api.order_kpi(_store(Settings.from_env()), date)


@app.route("/kpis/orders", methods=["GET"])
def list_order_kpis() -> dict[str, Any]:
    return api.order_kpis(_store(Settings.from_env()), _query())


@app.route("/kpis/categories/{category}", methods=["GET"])
def list_category_kpis(category: str) -> dict[str, Any]:
    return api.category_kpis(_store(Settings.from_env()), category, _query())


@app.route("/kpis/dates/{date}/categories", methods=["GET"])
def list_date_categories(date: str) -> dict[str, Any]:
    return api.date_categories(_store(Settings.from_env()), date)


@app.route("/kpis/{table}", methods=["GET"])
def list_kpi_items(table: str) -> dict[str, Any]:
    return api.kpi_items(_store(Settings.from_env()), table, _query())


@app.route("/batches/{batch_id}", methods=["GET"])
def get_batch(batch_id: str) -> dict[str, Any]:
    s = Settings.from_env()
    return api.get_batch(aws.client("s3"), s.bucket, Layout.from_config(_config(s)), batch_id)


@app.route("/batches/{batch_id}/rerun", methods=["POST"])
def rerun_batch(batch_id: str) -> Response:
    s = Settings.from_env()
    return api.rerun_batch(
        aws.client("s3"), aws.client("stepfunctions"), s.bucket, batch_id, lambda: _config(s), s.require_state_machine()
    )
