"""ECS task 2 (`python -m ecs_tasks.transform`): validated rows -> processed store -> KPIs -> DynamoDB; archive.

Runs under the pipeline lease, after validate. Steps, each idempotent so a retried task converges:
1. Download `validated/<batch_id>/<dataset>.csv`.
2. The engine's `transform_batch` on the S3 processed store (a re-run of a batch reuses its sequence
   number and rewrites identical files) -> the complete new KPI items of every touched date.
3. Replace those dates in the KPI tables (puts, then deletes of keys the date no longer has).
4. Archive exactly the snapshot's objects: copy to `archived/<batch_id>/...`, then delete that version
   (a version already gone with its copy present was archived by an earlier attempt).
5. The report (`reports/<batch_id>/report.json`) becomes SUCCEEDED; the batch record too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chalicelib.kpi_store import KpiTableStore
from chalicelib.layout import Layout
from chalicelib.obs import emit_metrics
from ecs_tasks import common
from kpipe.engine.store import S3Store
from kpipe.engine.transform import transform_batch


def transform(ctx: common.TaskContext, log: Any) -> dict[str, Any]:
    started = time.perf_counter()
    cfg = ctx.config()
    layout = Layout.from_config(cfg)
    s3, bucket = ctx.s3, ctx.bucket
    snapshot = common.get_json(s3, bucket, layout.snapshot_key(ctx.batch_id))
    if not snapshot or not snapshot.get("objects"):
        raise RuntimeError(f"no snapshot at {layout.snapshot_key(ctx.batch_id)}: validate has not run for this batch")

    with common.work_dir("transform") as tmp:
        validated_dir = Path(tmp) / "validated"
        validated_dir.mkdir()
        for name in cfg.datasets:
            common.download(s3, bucket, layout.validated_key(ctx.batch_id, name), None, validated_dir / f"{name}.csv")
        store = S3Store(s3, bucket, layout.processed_prefix)
        result = transform_batch(cfg, ctx.batch_id, validated_dir, store, Path(tmp) / "work")

    written: dict[str, dict[str, int]] = {}
    for table_name, by_date in result.tables.items():
        spec = cfg.kpis[table_name]
        date_field = _date_field(cfg)
        index = spec.index.name if spec.index is not None else None
        table = KpiTableStore(ctx.dynamodb.Table(ctx.table_name(table_name)), spec.key, date_field=date_field, date_index=index)
        stats = table.replace_dates(by_date)
        written[table_name] = {"put": stats.put, "deleted": stats.deleted}
    kpi_seconds = round(time.perf_counter() - started, 3)

    archived = common.move_all(s3, bucket, snapshot["objects"], lambda key: layout.archived_key(ctx.batch_id, key))
    if archived["missing"]:
        log.warning("archive_incomplete", missing=archived["missing"], reason="snapshot versions gone without an archived copy")

    seconds = round(time.perf_counter() - started, 3)
    report = common.load_report(ctx, layout)
    timings = dict(report.get("timings") or {})
    timings.update(transform_seconds=seconds)
    report.update(
        status="SUCCEEDED",
        stage="archived",
        seq=result.seq,
        dates=result.dates,
        rows_written=result.rows_written,
        rows_carried=result.rows_carried,
        kpi_items=written,
        archived=archived,
        timings=timings,
    )
    for stale in ("failure", "reason", "error"):
        report.pop(stale, None)
    common.save_report(ctx, layout, report)
    ctx.control.mark_batch(ctx.batch_id, "SUCCEEDED", seq=result.seq, report_key=layout.report_key(ctx.batch_id), dates=len(result.dates))

    emit_metrics(
        common.METRIC_NAMESPACE,
        {"Task": "transform"},
        {
            "TransformSeconds": (seconds, "Seconds"),
            "KpiWriteSeconds": (kpi_seconds, "Seconds"),
            "DatesTouched": (len(result.dates), "Count"),
            "ObjectsArchived": (archived["moved"] + archived["already"], "Count"),
        },
        batch_id=ctx.batch_id,
    )
    log.info("batch_transformed", seq=result.seq, dates=len(result.dates), seconds=seconds, archived=archived, kpi_items=written)
    return {"status": "succeeded", "batch_id": ctx.batch_id, "seq": result.seq, "dates": len(result.dates), "archived": archived}


def _date_field(cfg: Any) -> str:
    fields = {ds.partition_by for ds in cfg.datasets.values() if ds.partition_by}
    return next(iter(fields)) if fields else "order_date"


def main(env: Mapping[str, str] | None = None) -> int:
    """The container's entrypoint; `env` defaults to the process environment (the local agent may pass one)."""
    return common.run_task("transform", transform, env)


if __name__ == "__main__":
    sys.exit(main())
