"""The Lambda's I/O adapter: from one S3 ObjectCreated record to at most one Step Functions execution.

The decisions (complete? which objects? which id?) are `chalicelib.batch`'s; this module lists the bucket,
writes the manifest and calls StartExecution. It is handed its boto3 clients so tests run it on moto.

Why it is correct under at-least-once, concurrent, out-of-order events without a lock of its own:
- Every invocation lists *all* of `raw-data/` (not just its own key), so what it decides depends only on
  which objects are present, never on which event it was given. Same objects -> same batch id.
- The batch id is the execution name. Step Functions refuses a second execution of that name
  (`ExecutionAlreadyExists`), atomically, so N invocations that saw the same objects start one execution.
- A file arriving later makes a different set, hence a new id and a new execution. The executions are
  serialised by a lease and each snapshots `raw-data/` itself, so the later one either processes the late
  file or, finding everything archived already, ends SKIPPED. Nothing is lost, nothing counted twice.

Why ListObjectVersions and not ListObjectsV2 (+ HeadObject): the manifest must pin the exact *version* of
each object, because Transform archives "that version" and a re-upload of identical bytes (same ETag) must
be a new batch, not a duplicate of a finished execution. ListObjectVersions returns key, ETag, size and
version id in one paginated call, where ListObjectsV2 would need a HeadObject per key (N calls, and a race
between list and head). The current version is the entry with `IsLatest`; a key whose latest entry is a
delete marker has no `IsLatest` version, so deleted objects drop out. On an unversioned bucket the
version id is "null" and the manifest records None (the ETag then carries identity alone).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.batch import BATCH_ID_RE, S3Object, manifest_document, plan_batch
from chalicelib.config import PipelineConfig, parse_config
from chalicelib.layout import Layout, event_key
from chalicelib.obs import emit_metrics, get_logger

__all__ = [
    "METRIC_NAMESPACE",
    "ConfigLoader",
    "ConfigMissingError",
    "RerunConflictError",
    "RerunOutcome",
    "TriggerOutcome",
    "UnknownBatchError",
    "clear_config_cache",
    "execution_names",
    "handle_s3_event",
    "list_raw_objects",
    "load_config_from_s3",
    "on_object_created",
    "rerun",
]

METRIC_NAMESPACE = "kpipe"
ConfigLoader = Callable[[], PipelineConfig]

_RERUN_NAME_RE = re.compile(r"^(?P<batch>.+)-r(?P<attempt>[0-9]+)$")
_MAX_RERUN_NAME_TRIES = 5


class ConfigMissingError(RuntimeError):
    """`config/pipeline.yaml` is not in the bucket: the deployment is incomplete; fail loudly."""


class UnknownBatchError(LookupError):
    """No manifest for that batch id: it was never started here."""


class RerunConflictError(RuntimeError):
    """A rerun that cannot start now (still running, or its files are no longer in `raw-data/`)."""


# ---------------------------------------------------------------------------------------------------
# Config from S3, cached per container per ETag

_config_lock = threading.Lock()
_config_cache: dict[tuple[str, str], tuple[str, PipelineConfig]] = {}


def load_config_from_s3(s3: Any, bucket: str, key: str) -> PipelineConfig:
    """The pipeline.yaml in force, from the bucket; re-parsed only when its ETag changes.

    Why a conditional GET (If-None-Match) rather than a fixed TTL: a user's edit takes effect on the very
    next event, while an unchanged file costs one 304 round trip and no YAML parsing per invocation."""
    cache_key = (bucket, key)
    with _config_lock:
        cached = _config_cache.get(cache_key)
    request: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if cached is not None:
        request["IfNoneMatch"] = cached[0]
    try:
        response = s3.get_object(**request)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code")
        if cached is not None and (status == 304 or code in ("304", "NotModified")):
            return cached[1]
        if code in ("NoSuchKey", "404"):
            raise ConfigMissingError(f"s3://{bucket}/{key} does not exist; upload pipeline.yaml there") from exc
        raise
    text = response["Body"].read().decode("utf-8-sig")
    cfg = parse_config(text, f"s3://{bucket}/{key}")  # ConfigError propagates: never cache a bad config
    with _config_lock:
        _config_cache[cache_key] = (response["ETag"], cfg)
    return cfg


def clear_config_cache() -> None:
    with _config_lock:
        _config_cache.clear()


# ---------------------------------------------------------------------------------------------------
# Listing


def list_raw_objects(s3: Any, bucket: str, prefix: str, *, page_size: int | None = None) -> list[S3Object]:
    """The current version of every object under `prefix`, all pages (see the module doc for why versions)."""
    paginator = s3.get_paginator("list_object_versions")
    pagination: dict[str, Any] = {"PageSize": page_size} if page_size else {}
    found: dict[str, S3Object] = {}
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig=pagination):
        for version in page.get("Versions", []):
            if version.get("IsLatest"):
                found[version["Key"]] = S3Object.from_listing(version)
    return sorted(found.values(), key=lambda o: o.key)


# ---------------------------------------------------------------------------------------------------
# The event path


@dataclass(frozen=True)
class TriggerOutcome:
    """What one ObjectCreated record led to. `status`: ignored | incomplete | started | duplicate."""

    status: str
    key: str
    batch_id: str | None = None
    execution_arn: str | None = None
    manifest_key: str | None = None
    missing: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    objects: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "key": self.key,
            "batch_id": self.batch_id,
            "execution_arn": self.execution_arn,
            "manifest_key": self.manifest_key,
            "missing": list(self.missing),
            "excluded": list(self.excluded),
            "objects": self.objects,
        }


def on_object_created(
    s3: Any,
    sfn: Any,
    bucket: str,
    key: str,
    cfg_loader: ConfigLoader,
    state_machine_arn: str,
    *,
    log: Any = None,
) -> TriggerOutcome:
    """Handle one ObjectCreated record. `key` is the key *as it appears in the event* (URL-encoded, `+`
    for spaces); it is decoded here, exactly once."""
    decoded = event_key(key)
    log = (log if log is not None else get_logger(component="trigger")).bind(bucket=bucket, key=decoded)
    cfg = cfg_loader()
    layout = Layout.from_config(cfg)

    if layout.dataset_of(decoded) is None:
        reason = "outside the raw prefix" if not decoded.startswith(layout.raw_prefix) else "matches no dataset"
        log.info("key_ignored", reason=reason, raw_prefix=layout.raw_prefix)
        outcome = TriggerOutcome("ignored", decoded)
        _emit(outcome)
        return outcome

    plan = plan_batch(list_raw_objects(s3, bucket, layout.raw_prefix), layout)
    if plan.excluded:
        log.info("keys_excluded", reason="not part of any dataset", keys=plan.excluded[:100], count=len(plan.excluded))
    if not plan.complete:
        log.info("batch_incomplete", missing=plan.missing)
        outcome = TriggerOutcome("incomplete", decoded, missing=plan.missing, excluded=plan.excluded)
        _emit(outcome)
        return outcome

    bid = plan.batch_id
    log = log.bind(batch_id=bid)
    manifest_key = layout.manifest_key(bid)
    document = manifest_document(bid, plan.manifest, bucket=bucket, layout=layout, excluded=plan.excluded)
    _put_manifest(s3, bucket, manifest_key, document, overwrite=False)

    execution_input = {
        "batch_id": bid,
        "manifest_key": manifest_key,
        "settle_seconds": cfg.trigger.settle_seconds,
        # A per-invocation nonce: Step Functions treats a same-name *same-input* StartExecution on a running
        # execution as an idempotent success, which would hide duplicates; a distinct input makes every
        # duplicate an explicit ExecutionAlreadyExists, so logs and metrics count them.
        "trigger": {"key": decoded, "nonce": uuid.uuid4().hex},
    }
    common = {"key": decoded, "batch_id": bid, "manifest_key": manifest_key, "excluded": plan.excluded}
    try:
        response = sfn.start_execution(
            stateMachineArn=state_machine_arn, name=bid, input=json.dumps(execution_input, sort_keys=True)
        )
    except ClientError as exc:
        if _error_code(exc) != "ExecutionAlreadyExists":
            raise
        log.info("duplicate_batch", reason="an execution with this batch id already exists")
        outcome = TriggerOutcome("duplicate", objects=len(plan.manifest), **common)
        _emit(outcome)
        return outcome
    log.info("execution_started", execution_arn=response["executionArn"], objects=len(plan.manifest))
    outcome = TriggerOutcome(
        "started", execution_arn=response["executionArn"], objects=len(plan.manifest), **common
    )
    _emit(outcome)
    return outcome


def handle_s3_event(
    event: Mapping[str, Any],
    s3: Any,
    sfn: Any,
    cfg_loader: ConfigLoader,
    state_machine_arn: str,
    *,
    request_id: str | None = None,
) -> list[TriggerOutcome]:
    """Every ObjectCreated record of a Lambda S3 event (chalice's S3Event exposes only the first record;
    an event may carry several). A failing record does not stop the others; the first error is re-raised
    afterwards so Lambda retries the event, which is safe because handling a record is idempotent."""
    log = get_logger(component="trigger", request_id=request_id)
    records = event.get("Records") or []
    if not records:
        log.info("event_ignored", reason="no Records (e.g. s3:TestEvent)")
        return []
    outcomes: list[TriggerOutcome] = []
    errors: list[Exception] = []
    for record in records:
        event_name = str(record.get("eventName", ""))
        if not event_name.startswith("ObjectCreated"):
            log.info("event_ignored", reason="not an ObjectCreated record", event_name=event_name)
            continue
        bucket = record["s3"]["bucket"]["name"]
        key = record["s3"]["object"]["key"]
        try:
            outcomes.append(on_object_created(s3, sfn, bucket, key, cfg_loader, state_machine_arn, log=log))
        except Exception as exc:
            log.exception("record_failed", bucket=bucket, key=event_key(key))
            errors.append(exc)
    if errors:
        raise errors[0]
    return outcomes


def _emit(outcome: TriggerOutcome) -> None:
    """One EMF line per record. All four counters every time (zeros included), so alarms see 0, not no data."""
    emit_metrics(
        METRIC_NAMESPACE,
        {"Function": "trigger"},
        {
            "BatchesStarted": (int(outcome.status == "started"), "Count"),
            "DuplicateTriggers": (int(outcome.status == "duplicate"), "Count"),
            "IncompleteTriggers": (int(outcome.status == "incomplete"), "Count"),
            "IgnoredKeys": (int(outcome.status == "ignored"), "Count"),
        },
        batch_id=outcome.batch_id,
        key=outcome.key,
    )


def _put_manifest(s3: Any, bucket: str, key: str, document: dict[str, Any], *, overwrite: bool) -> None:
    """Write the manifest. For the event path it is written once (conditional put, If-None-Match: *):
    duplicates then cost no new object version. The content is deterministic, so the unconditional
    fallback on a concurrent-write conflict writes the same bytes."""
    body = json.dumps(document, indent=2, sort_keys=True).encode("utf-8")
    extra: dict[str, Any] = {} if overwrite else {"IfNoneMatch": "*"}
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **extra)
    except ClientError as exc:
        code = _error_code(exc)
        if code == "PreconditionFailed":
            return
        if code == "ConditionalRequestConflict":
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
            return
        raise


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# ---------------------------------------------------------------------------------------------------
# Rerun after a failure


@dataclass(frozen=True)
class RerunOutcome:
    batch_id: str
    attempt: int
    execution_name: str
    execution_arn: str
    manifest_key: str
    objects: int
    added: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "attempt": self.attempt,
            "execution_name": self.execution_name,
            "execution_arn": self.execution_arn,
            "manifest_key": self.manifest_key,
            "objects": self.objects,
            "added": list(self.added),
        }


def execution_names(sfn: Any, state_machine_arn: str, bid: str) -> dict[int, str]:
    """Attempts of one batch: {0: status of `bid`, N: status of `bid-rN`}, from ListExecutions (all pages)."""
    attempts: dict[int, str] = {}
    paginator = sfn.get_paginator("list_executions")
    for page in paginator.paginate(stateMachineArn=state_machine_arn):
        for execution in page.get("executions", []):
            name = execution["name"]
            if name == bid:
                attempts[0] = execution["status"]
                continue
            match = _RERUN_NAME_RE.match(name)
            if match and match["batch"] == bid:
                attempts[int(match["attempt"])] = execution["status"]
    return attempts


def rerun(
    s3: Any,
    sfn: Any,
    bucket: str,
    bid: str,
    cfg_loader: ConfigLoader,
    state_machine_arn: str,
    *,
    log: Any = None,
) -> RerunOutcome:
    """Start `<batch_id>-r<N>` for what is present in `raw-data/` now, after an attempt failed.

    Guards, because a rerun is a manual action that must not start work that cannot be right:
    - the batch must be known (its manifest exists) -> else UnknownBatchError;
    - no attempt of it may be RUNNING -> else RerunConflictError;
    - the objects of its last manifest must still be present (a failed attempt keeps them in `raw-data/`;
      a successful one archived them) and form a complete batch -> else RerunConflictError.
    Files that arrived since are included (they are present); the lease then serialises this attempt with
    any automatic execution for the larger set, which ends SKIPPED once this one archived everything.
    """
    if not BATCH_ID_RE.match(bid):
        raise ValueError(f"not a batch id: {bid!r}; expected b- followed by 20 hex digits")
    log = (log if log is not None else get_logger(component="rerun")).bind(batch_id=bid, bucket=bucket)
    cfg = cfg_loader()
    layout = Layout.from_config(cfg)
    manifest_key = layout.manifest_key(bid)
    try:
        previous = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    except ClientError as exc:
        if _error_code(exc) in ("NoSuchKey", "404"):
            raise UnknownBatchError(f"unknown batch {bid}: no {manifest_key}") from exc
        raise

    attempts = execution_names(sfn, state_machine_arn, bid)
    running = sorted(n for n, status in attempts.items() if status == "RUNNING")
    if running:
        raise RerunConflictError(f"batch {bid} has an attempt still running: {_attempt_name(bid, running[-1])}")

    plan = plan_batch(list_raw_objects(s3, bucket, layout.raw_prefix), layout)
    if not plan.complete:
        raise RerunConflictError(f"raw-data/ does not hold a complete batch; missing: {', '.join(plan.missing)}")
    present = {(e.key, e.etag, e.version_id) for e in plan.manifest}
    gone = [
        o["key"] for o in previous.get("objects", []) if (o["key"], o["etag"], o.get("version_id")) not in present
    ]
    if gone:
        raise RerunConflictError(
            f"batch {bid}'s files are no longer in raw-data/ as they were (archived or replaced): {', '.join(gone[:10])}"
        )
    before = {o["key"] for o in previous.get("objects", [])}
    added = [e.key for e in plan.manifest if e.key not in before]

    attempt = max(attempts, default=0) + 1
    for _ in range(_MAX_RERUN_NAME_TRIES):
        name = _attempt_name(bid, attempt)
        document = manifest_document(
            bid, plan.manifest, bucket=bucket, layout=layout, excluded=plan.excluded, attempt=attempt
        )
        _put_manifest(s3, bucket, manifest_key, document, overwrite=True)
        execution_input = {"batch_id": bid, "manifest_key": manifest_key, "settle_seconds": 0, "attempt": attempt}
        try:
            response = sfn.start_execution(
                stateMachineArn=state_machine_arn, name=name, input=json.dumps(execution_input, sort_keys=True)
            )
        except ClientError as exc:
            if _error_code(exc) != "ExecutionAlreadyExists":
                raise
            attempt += 1  # a concurrent rerun took this number
            continue
        log.info("rerun_started", attempt=attempt, execution_arn=response["executionArn"], added=added)
        emit_metrics(METRIC_NAMESPACE, {"Function": "trigger"}, {"Reruns": (1, "Count")}, batch_id=bid)
        return RerunOutcome(
            bid, attempt, name, response["executionArn"], manifest_key, len(plan.manifest), added
        )
    raise RerunConflictError(f"could not find a free attempt name for {bid} after {_MAX_RERUN_NAME_TRIES} tries")


def _attempt_name(bid: str, attempt: int) -> str:
    return bid if attempt == 0 else f"{bid}-r{attempt}"

