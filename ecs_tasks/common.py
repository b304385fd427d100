"""What the three task entrypoints share: their parameters (from the environment the state machine and
the task definition set), the report back to Step Functions, heartbeats, and small S3 helpers.

A task reports its own outcome with its task token (`SendTaskSuccess` / `SendTaskFailure`), so the same
container works under Fargate and under the local ECS agent. Exit codes tell a supervisor whether it did:

- 0 (`EXIT_SUCCEEDED`): success reported;
- 3 (`EXIT_REPORTED_FAILURE`): failure reported (the state machine retries or catches it);
- anything else (crash, OOM kill, cannot reach Step Functions): nothing was reported. On AWS the state's
  HeartbeatSeconds notices; the local agent reports `Kpipe.TaskCrashed` at once.

Error names (the state machine's Retry/Catch match them):
- `Kpipe.Transient`: throttling, 5xx, connection trouble after botocore's own retries -> retried;
- `Kpipe.ConfigError`: pipeline.yaml missing or invalid -> caught, batch marked failed;
- `Kpipe.TaskFailed`: anything else -> caught, batch marked failed.

Every step of every task is idempotent (fixed output keys, overwrites, tolerant archive), so a retried
task redoes its work with the same result.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from chalicelib import aws
from chalicelib.config import ConfigError, PipelineConfig
from chalicelib.control import ControlTable
from chalicelib.kpi_store import KpiStore
from chalicelib.kpi_tables import table_names_from_env
from chalicelib.layout import Layout
from chalicelib.obs import emit_metrics, get_logger
from chalicelib.trigger import ConfigMissingError, load_config_from_s3

__all__ = [
    "EXIT_REPORTED_FAILURE",
    "EXIT_SUCCEEDED",
    "EXIT_UNREPORTED",
    "METRIC_NAMESPACE",
    "TaskContext",
    "TransientError",
    "classify",
    "get_json",
    "move_object",
    "put_json",
    "run_task",
]

EXIT_SUCCEEDED = 0
EXIT_REPORTED_FAILURE = 3
EXIT_UNREPORTED = 4
METRIC_NAMESPACE = "kpipe"
HEARTBEAT_EVERY_SECONDS = 30.0  # the state machine's HeartbeatSeconds is 300
_MAX_ERROR = 256  # SendTaskFailure limits
_MAX_CAUSE = 32768

_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "RequestThrottled",
        "SlowDown",
        "InternalError",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionInProgressException",
    }
)


class TransientError(RuntimeError):
    """Raised by a task for a condition worth retrying as is (the state machine retries Kpipe.Transient)."""


@dataclass(frozen=True)
class TaskContext:
    """A task's parameters: per run (batch, manifest, token) from the container overrides, the rest from
    the task definition (docs/contracts.md, "Runtime environment")."""

    batch_id: str
    manifest_key: str
    task_token: str | None
    bucket: str
    kpi_tables: Mapping[str, str]  # logical -> deployed name (KPIPE_KPI_TABLES; KPIPE_ORDER_TABLE/KPIPE_CATEGORY_TABLE as fallback)
    control_table: str
    config_key: str
    env: Mapping[str, str]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TaskContext:
        env = os.environ if env is None else env
        missing = [name for name in ("KPIPE_BUCKET", "KPIPE_BATCH_ID") if not env.get(name)]
        if missing:
            raise ConfigError([f"<environment>: {', '.join(missing)} not set; allowed: set by the task definition and the state machine"])
        try:
            kpi_tables = table_names_from_env(env)
        except ValueError as exc:
            raise ConfigError([f"<environment>: {exc}"]) from exc
        return cls(
            batch_id=env["KPIPE_BATCH_ID"],
            manifest_key=env.get("KPIPE_MANIFEST_KEY", ""),
            task_token=env.get("KPIPE_TASK_TOKEN") or None,
            bucket=env["KPIPE_BUCKET"],
            kpi_tables=kpi_tables,
            control_table=env.get("KPIPE_CONTROL_TABLE", "KpipeControl"),
            config_key=env.get("KPIPE_CONFIG_KEY", "config/pipeline.yaml"),
            env=dict(env),
        )

    # AWS ----------------------------------------------------------------------------------------
    @property
    def s3(self) -> Any:
        return aws.client("s3")

    @property
    def sfn(self) -> Any:
        return aws.client("stepfunctions")

    @property
    def dynamodb(self) -> Any:
        return aws.resource("dynamodb")

    @property
    def control(self) -> ControlTable:
        return ControlTable(self.dynamodb.Table(self.control_table))

    def config(self) -> PipelineConfig:
        """The pipeline.yaml in force (the bucket's copy, as the Lambda reads it)."""
        return load_config_from_s3(self.s3, self.bucket, self.config_key)

    def table_name(self, logical: str) -> str:
        """The deployed name of a KPI table named in pipeline.yaml (a table the environment does not name
        is deployed under its logical name)."""
        return self.kpi_tables.get(logical, logical)

    @property
    def order_table(self) -> str:
        return self.table_name("OrderKPI")

    @property
    def category_table(self) -> str:
        return self.table_name("CategoryKPI")

    def kpi_store(self, cfg: PipelineConfig) -> KpiStore:
        """Every KPI table of `cfg`, under its deployed name: `kpi_store(cfg).replace_periods(table, items_by_period)`."""
        return KpiStore(self.dynamodb, cfg, self.kpi_tables)


# --------------------------------------------------------------------------------------------------
# Running a task


def classify(exc: BaseException) -> str:
    """The error name reported to Step Functions for an exception (see the module doc)."""
    if isinstance(exc, TransientError | ConnectionError | HTTPClientError | TimeoutError):
        return "Kpipe.Transient"
    if isinstance(exc, ConfigError | ConfigMissingError):
        return "Kpipe.ConfigError"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if err.get("Code") in _TRANSIENT_CODES or int(status) >= 500:
            return "Kpipe.Transient"
    return "Kpipe.TaskFailed"


class _Heartbeat:
    """Sends SendTaskHeartbeat every `every` seconds while the work runs, so a lost container is noticed
    (HeartbeatSeconds) long before the task's TimeoutSeconds."""

    def __init__(self, sfn: Any, token: str, every: float, log: Any) -> None:
        self.sfn, self.token, self.every, self.log = sfn, token, every, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.sfn.send_task_heartbeat(taskToken=self.token)
            except Exception as exc:  # the state may have timed out; the work's own report will say so
                self.log.warning("heartbeat_failed", error=str(exc)[:300])


Work = Callable[[TaskContext, Any], dict[str, Any]]


def run_task(name: str, work: Work, env: Mapping[str, str] | None = None) -> int:
    """Run `work(ctx, log)` and report its outcome to Step Functions; returns the process exit code."""
    started = time.perf_counter()
    log = get_logger(component=f"task.{name}")
    try:
        ctx = TaskContext.from_env(env)
    except ConfigError as exc:
        log.error("task_misconfigured", problems=exc.problems)
        return EXIT_UNREPORTED
    log = log.bind(batch_id=ctx.batch_id)
    log.info("task_started", manifest_key=ctx.manifest_key)
    outcome: dict[str, Any] | None = None
    error: tuple[str, str] | None = None
    try:
        if ctx.task_token:
            with _Heartbeat(ctx.sfn, ctx.task_token, HEARTBEAT_EVERY_SECONDS, log):
                outcome = work(ctx, log)
        else:
            outcome = work(ctx, log)
    except Exception as exc:
        error_name = classify(exc)
        cause = f"{type(exc).__name__}: {exc}"
        log.error("task_failed", error=error_name, cause=cause[:2000], traceback=traceback.format_exc()[-4000:])
        error = (error_name, cause)
    seconds = time.perf_counter() - started
    emit_metrics(
        METRIC_NAMESPACE,
        {"Task": name},
        {"TaskSeconds": (round(seconds, 3), "Seconds"), "TaskFailures": (int(error is not None), "Count")},
        batch_id=ctx.batch_id,
    )
    if not ctx.task_token:
        log.info("task_finished_without_token", outcome=outcome, error=error)
        return EXIT_SUCCEEDED if error is None else EXIT_REPORTED_FAILURE
    try:
        if error is None:
            ctx.sfn.send_task_success(taskToken=ctx.task_token, output=json.dumps(outcome, default=str))
        else:
            ctx.sfn.send_task_failure(taskToken=ctx.task_token, error=error[0][:_MAX_ERROR], cause=error[1][:_MAX_CAUSE])
    except Exception as exc:
        log.error("report_failed", error=str(exc)[:1000])
        return EXIT_UNREPORTED
    log.info("task_finished", status="succeeded" if error is None else "failed", seconds=round(seconds, 3), output=outcome)
    return EXIT_SUCCEEDED if error is None else EXIT_REPORTED_FAILURE


def work_dir(name: str) -> tempfile.TemporaryDirectory[str]:
    """A scratch directory for one run (Fargate: ephemeral storage; locally: the system temp dir)."""
    return tempfile.TemporaryDirectory(prefix=f"kpipe-{name}-")


# --------------------------------------------------------------------------------------------------
# S3 helpers


def _code(exc: Exception) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def is_missing(exc: Exception) -> bool:
    return _code(exc) in ("404", "NoSuchKey", "NoSuchVersion", "NotFound")


def put_json(s3: Any, bucket: str, key: str, document: Any) -> None:
    body = json.dumps(document, indent=2, sort_keys=True, default=str).encode("utf-8")
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")


def get_json(s3: Any, bucket: str, key: str) -> Any | None:
    """The JSON document at `key`, or None when there is none."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise
    return json.loads(body)


def download(s3: Any, bucket: str, key: str, version_id: str | None, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    extra = {"VersionId": version_id} if version_id else None
    s3.download_file(bucket, key, str(dest), ExtraArgs=extra)


def download_if_present(s3: Any, bucket: str, key: str, dest: Path) -> bool:
    """Download `key` to `dest`; False (and no file) when there is no such object."""
    try:
        download(s3, bucket, key, None, dest)
    except ClientError as exc:
        if is_missing(exc):
            return False
        raise
    return True


def upload_outputs(s3: Any, bucket: str, layout: Layout, batch_id: str, name: str, out_dir: Path) -> None:
    """A dataset's validated and rejected files to their keys."""
    files = {
        out_dir / "validated" / f"{name}.parquet": layout.validated_key(batch_id, f"{name}.parquet"),
        out_dir / "rejected" / f"{name}.csv": layout.rejected_key(batch_id, name),
    }
    for path, key in files.items():
        if path.exists():
            s3.upload_file(str(path), bucket, key)


def exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_missing(exc):
            return False
        raise
    return True


def move_object(s3: Any, bucket: str, key: str, version_id: str | None, dest_key: str) -> str:
    """Move one object version: copy to `dest_key`, then delete exactly that version.

    Idempotent: a version already gone (moved by an earlier attempt of this task) is reported as
    "already" when its copy exists, "missing" otherwise. Deleting the version, not the key, leaves a
    newer upload of the same key in place for a later batch. Returns "moved" | "already" | "missing"."""
    source: dict[str, str] = {"Bucket": bucket, "Key": key}
    if version_id:
        source["VersionId"] = version_id
    try:
        s3.copy_object(Bucket=bucket, Key=dest_key, CopySource=source)
    except ClientError as exc:
        if not is_missing(exc):
            raise
        return "already" if exists(s3, bucket, dest_key) else "missing"
    if version_id:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version_id)
    else:
        s3.delete_object(Bucket=bucket, Key=key)
    return "moved"


def move_all(s3: Any, bucket: str, objects: list[dict[str, Any]], dest: Callable[[str], str]) -> dict[str, int]:
    """Move every snapshot object; all copies first, then the deletes, so a failure halfway never leaves
    a batch split between raw-data/ and its destination without a full copy."""
    counts = {"moved": 0, "already": 0, "missing": 0}
    copied: list[dict[str, Any]] = []
    for obj in objects:
        source: dict[str, str] = {"Bucket": bucket, "Key": obj["key"]}
        if obj.get("version_id"):
            source["VersionId"] = obj["version_id"]
        try:
            s3.copy_object(Bucket=bucket, Key=dest(obj["key"]), CopySource=source)
        except ClientError as exc:
            if not is_missing(exc):
                raise
            counts["already" if exists(s3, bucket, dest(obj["key"])) else "missing"] += 1
            continue
        copied.append(obj)
    for obj in copied:
        if obj.get("version_id"):
            s3.delete_object(Bucket=bucket, Key=obj["key"], VersionId=obj["version_id"])
        else:
            s3.delete_object(Bucket=bucket, Key=obj["key"])
        counts["moved"] += 1
    return counts


# --------------------------------------------------------------------------------------------------
# The batch report (reports/<batch_id>/report.json): RUNNING after validate, then SUCCEEDED/FAILED/SKIPPED


def load_report(ctx: TaskContext, layout: Layout) -> dict[str, Any]:
    return get_json(ctx.s3, ctx.bucket, layout.report_key(ctx.batch_id)) or {"batch_id": ctx.batch_id}


def save_report(ctx: TaskContext, layout: Layout, report: dict[str, Any]) -> None:
    report["batch_id"] = ctx.batch_id
    report["manifest_key"] = ctx.manifest_key or report.get("manifest_key")
    report["snapshot_key"] = layout.snapshot_key(ctx.batch_id)
    report["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    put_json(ctx.s3, ctx.bucket, layout.report_key(ctx.batch_id), report)
