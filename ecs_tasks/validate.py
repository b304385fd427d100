"""ECS task 1 (`python -m ecs_tasks.validate`): snapshot `raw-data/`, validate every row, write the outputs.

Runs under the pipeline lease, so nothing else consumes `raw-data/` meanwhile. Steps:
1. Snapshot: the current version of every object under the raw prefix that matches a dataset pattern
   (a superset of the manifest when more files arrived during the settle wait), written to
   `reports/<batch_id>/snapshot.json`. Files arriving after this moment are not in the snapshot and stay
   in `raw-data/` for a later run.
2. Skip when the snapshot is not a complete batch, or holds none of the manifest's objects: an earlier
   run (a duplicate event's execution, or one that saw a superset) has processed and archived them.
   A skipped run touches nothing and returns `{"status": "skipped"}`.
3. Keys under the raw prefix that match no dataset are moved to `quarantine/<batch_id>/`.
4. Download the snapshot's versions into a directory mirroring the keys below the raw prefix, run the
   engine's `validate_batch`, upload `validated/<batch_id>/<dataset>.parquet` and `batch.json` (the content digest), `rejected/<batch_id>/<dataset>.csv` and the report (status RUNNING, with the per-dataset counts).

Output to the state machine (small): status, counts, `threshold_exceeded` and its problems.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from chalicelib.batch import build_manifest, group_by_dataset, missing_parts
from chalicelib.layout import Layout
from chalicelib.obs import emit_metrics
from chalicelib.trigger import list_raw_objects
from ecs_tasks import common
from kpipe.engine.validate import validate_batch


def validate(ctx: common.TaskContext, log: Any) -> dict[str, Any]:
    started = time.perf_counter()
    cfg = ctx.config()
    layout = Layout.from_config(cfg)
    s3, bucket = ctx.s3, ctx.bucket
    ctx.control.mark_batch(ctx.batch_id, "RUNNING", manifest_key=ctx.manifest_key, report_key=layout.report_key(ctx.batch_id))

    listed = list_raw_objects(s3, bucket, layout.raw_prefix)
    by_dataset, excluded = group_by_dataset(listed, layout)
    snapshot = build_manifest(by_dataset, layout)
    missing = missing_parts(by_dataset, layout)
    manifest = common.get_json(s3, bucket, ctx.manifest_key) if ctx.manifest_key else None
    overlap = _overlaps(manifest, snapshot)

    if missing or not overlap:
        reason = (
            f"raw-data/ is not a complete batch (missing {', '.join(missing)})"
            if missing
            else "none of the manifest's objects is in raw-data/ any more"
        )
        log.info("batch_skipped", reason=reason, present=len(snapshot))
        report = common.load_report(ctx, layout)
        if report.get("status") != "SUCCEEDED":  # never overwrite a finished batch's report
            report.update(status="SKIPPED", reason=reason)
            common.save_report(ctx, layout, report)
        ctx.control.mark_batch(ctx.batch_id, "SKIPPED", reason=reason)
        emit_metrics(common.METRIC_NAMESPACE, {"Task": "validate"}, {"BatchesSkipped": (1, "Count")}, batch_id=ctx.batch_id)
        return {"status": "skipped", "batch_id": ctx.batch_id, "reason": reason}

    quarantined = []
    for key in excluded:
        if key.endswith("/"):
            continue  # a "folder" placeholder made by a console: harmless, leave it
        obj = next(o for o in listed if o.key == key)
        common.move_object(s3, bucket, key, obj.version_id, layout.quarantine_key(ctx.batch_id, key))
        quarantined.append(key)
    if quarantined:
        log.warning("keys_quarantined", reason="match no dataset pattern", keys=quarantined[:100], count=len(quarantined))

    common.put_json(
        s3,
        bucket,
        layout.snapshot_key(ctx.batch_id),
        {
            "batch_id": ctx.batch_id,
            "manifest_key": ctx.manifest_key,
            "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "objects": [asdict(e) for e in snapshot],
            "quarantined": quarantined,
        },
    )

    with common.work_dir("validate") as tmp:
        raw_dir, out_dir = Path(tmp) / "raw", Path(tmp) / "out"
        for entry in snapshot:
            common.download(s3, bucket, entry.key, entry.version_id, raw_dir / layout.relative(entry.key))
        # the executor's own threads use the vCPUs the task was given (Fargate: TaskCpu / 1024)
        result = validate_batch(cfg, raw_dir, out_dir, ctx.batch_id)
        for name in cfg.datasets:
            common.upload_outputs(s3, bucket, layout, ctx.batch_id, name, out_dir)
        s3.upload_file(str(out_dir / "validated" / "batch.json"), bucket, layout.validated_key(ctx.batch_id, "batch.json"))
    return _conclude(ctx, layout, result, [e.key for e in snapshot], quarantined, round(time.perf_counter() - started, 3), log)


def _conclude(
    ctx: common.TaskContext, layout: Layout, result: dict[str, Any], objects: list[str], quarantined: list[str], seconds: float, log: Any
) -> dict[str, Any]:
    """The report (RUNNING, stage validated), the metrics, and the small output the state machine reads."""
    report = common.load_report(ctx, layout)
    report.update(
        status="RUNNING",
        stage="validated",
        executor=result["executor"],
        datasets=result["datasets"],
        threshold_exceeded=result["threshold_exceeded"],
        threshold_problems=result["threshold_problems"],
        objects=objects,
        quarantined=quarantined,
        timings={"validate_seconds": seconds},
    )
    for stale in ("failure", "reason", "error"):
        report.pop(stale, None)
    common.save_report(ctx, layout, report)

    for name, stats in result["datasets"].items():
        emit_metrics(
            common.METRIC_NAMESPACE,
            {"Task": "validate", "Dataset": name},
            {
                "RowsIn": (stats["rows_in"], "Count"),
                "RowsValid": (stats["rows_valid"], "Count"),
                "RowsRejected": (stats["rows_rejected"], "Count"),
            },
            batch_id=ctx.batch_id,
        )
    emit_metrics(common.METRIC_NAMESPACE, {"Task": "validate"}, {"ValidateSeconds": (seconds, "Seconds")}, batch_id=ctx.batch_id)
    totals = {k: sum(s[k] for s in result["datasets"].values()) for k in ("rows_in", "rows_valid", "rows_rejected")}
    log.info("batch_validated", objects=len(objects), seconds=seconds, threshold_exceeded=result["threshold_exceeded"], **totals)
    return {
        "status": "validated",
        "batch_id": ctx.batch_id,
        "objects": len(objects),
        "threshold_exceeded": bool(result["threshold_exceeded"]),
        "threshold_problems": result["threshold_problems"][:20],
        **totals,
    }


def _overlaps(manifest: dict[str, Any] | None, snapshot: list[Any]) -> bool:
    """Does the snapshot still hold at least one object of the manifest (same key and version)?

    Without a readable manifest (an operator started the execution by hand) the snapshot decides alone."""
    if not manifest or not manifest.get("objects"):
        return True
    present = {(e.key, e.version_id, e.etag) for e in snapshot}
    return any((o["key"], o.get("version_id"), o.get("etag")) in present for o in manifest["objects"])


def main(env: Mapping[str, str] | None = None) -> int:
    """The container's entrypoint; `env` defaults to the process environment (the local agent may pass one)."""
    return common.run_task("validate", validate, env)


if __name__ == "__main__":
    sys.exit(main())
