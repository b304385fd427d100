"""ECS task 2 (`python -m ecs_tasks.transform`): validated rows -> processed store -> KPIs -> DynamoDB; archive.

Runs under the pipeline lease, after validate. Steps, each idempotent so a retried task converges:
1. Download `validated/<batch_id>/<dataset>.parquet` and `batch.json` (the batch's content digest).
2. The engine's `index_batch` on the S3 processed store: the batch's rows merged into the Hive-partitioned
   Parquet partitions they touch and the key index (a re-run, or the same files under another batch id,
   takes its old sequence number and changes nothing).
3. The complete KPI items of every touched date, computed from those partitions, replace the dates' items
   in the KPI tables (puts, then deletes of keys a date no longer has).
4. Archive exactly the snapshot's objects: copy to `archived/<batch_id>/...`, then delete that version
   (a version already gone with its copy present was archived by an earlier attempt).
5. The report (`reports/<batch_id>/report.json`) becomes SUCCEEDED; the batch record too.

Scale-out (`KPIPE_TRANSFORM_STEP`, set by the state machine): a big batch (at least `KPIPE_FANOUT_MIN_ROWS`
validated rows in partitioned datasets, default 500,000, and `scale.transform_concurrency` > 1 in pipeline.yaml)
is merged without computing any KPI, stops after step 2 and returns
`{"status": "indexed", "groups": [0..n-1]}`; the state machine's Map then runs one `recompute` task per group
of the dates left to recompute (`KPIPE_DATE_GROUP` of `KPIPE_DATE_GROUPS`, step 3 for those dates) and one `finish` task (4-5).
The dates of each group are those of `kpipe.engine.transform.date_groups`, so any split gives the same KPIs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chalicelib.config import PipelineConfig
from chalicelib.kpi_store import KpiTableStore
from chalicelib.kpi_tables import table_shape
from chalicelib.layout import Layout
from chalicelib.obs import emit_metrics
from ecs_tasks import common
from kpipe.engine.store import S3Store
from kpipe.engine.transform import batch_kpis, date_groups, index_batch, null_key_rows, partitioned_rows, recompute

STEPS = ("auto", "recompute", "finish")
DEFAULT_FANOUT_MIN_ROWS = 500_000


def transform(ctx: common.TaskContext, log: Any) -> dict[str, Any]:
    step = ctx.env.get("KPIPE_TRANSFORM_STEP") or "auto"
    if step not in STEPS:
        raise ValueError(f"KPIPE_TRANSFORM_STEP={step!r}; allowed: {', '.join(STEPS)}")
    cfg = ctx.config()
    layout = Layout.from_config(cfg)
    store = S3Store(ctx.s3, ctx.bucket, layout.processed_prefix)
    if step == "recompute":
        return _recompute_group(ctx, cfg, layout, store, log)
    if step == "finish":
        return _finish(ctx, cfg, layout, common.get_json(ctx.s3, ctx.bucket, layout.transform_plan_key(ctx.batch_id)) or {}, log)

    started = time.perf_counter()
    snapshot = common.get_json(ctx.s3, ctx.bucket, layout.snapshot_key(ctx.batch_id))
    if not snapshot or not snapshot.get("objects"):
        raise RuntimeError(f"no snapshot at {layout.snapshot_key(ctx.batch_id)}: validate has not run for this batch")
    with common.work_dir("transform") as tmp:
        validated_dir = Path(tmp) / "validated"
        validated_dir.mkdir()
        for name in [*(f"{n}.parquet" for n in cfg.datasets), "batch.json"]:
            common.download(ctx.s3, ctx.bucket, layout.validated_key(ctx.batch_id, name), None, validated_dir / name)
        # a big batch leaves every KPI to the Map's recompute tasks (many Fargate tasks at once); a
        # smaller one computes them here, from the partitions the merge just wrote
        rows = partitioned_rows(cfg, validated_dir)
        fan_out = cfg.scale.transform_concurrency > 1 and rows >= int(ctx.env.get("KPIPE_FANOUT_MIN_ROWS") or DEFAULT_FANOUT_MIN_ROWS)
        indexed = index_batch(cfg, ctx.batch_id, validated_dir, store, Path(tmp) / "index")
        rest = indexed.dates  # every touched date is computed again from its partitions
        groups = min(cfg.scale.transform_concurrency, len(rest))
        plan = {
            "batch_id": ctx.batch_id,
            "seq": indexed.seq,
            "dates": indexed.dates,
            "recompute_dates": rest,
            "groups": groups,
            "rows_written": indexed.rows_written,
            "rows_carried": indexed.rows_carried,
            "null_key_rows": null_key_rows(cfg, validated_dir),
            # a retry of this very batch is not a replay (on AWS a batch id names an upload, not its contents)
            "replay_of": indexed.replay_of if indexed.first_batch != ctx.batch_id else None,
            "replay_batch": indexed.first_batch,
            "index_seconds": round(time.perf_counter() - started, 3),
        }
        common.put_json(ctx.s3, ctx.bucket, layout.transform_plan_key(ctx.batch_id), plan)
        if fan_out and groups > 1:
            log.info("batch_indexed", seq=indexed.seq, dates=len(indexed.dates), recompute=len(rest), rows=rows, groups=groups)
            return {"status": "indexed", "batch_id": ctx.batch_id, "seq": indexed.seq, "groups": list(range(groups)), "group_count": groups}
        tables = batch_kpis(cfg, indexed, store, Path(tmp) / "kpis")
    plan["kpi_items"] = write_kpis(ctx, cfg, tables)
    return _finish(ctx, cfg, layout, plan, log, started)


def write_kpis(ctx: common.TaskContext, cfg: PipelineConfig, tables: Mapping[str, Mapping[str, list[dict[str, Any]]]]) -> dict[str, dict[str, int]]:
    """Replace the given periods of every KPI table (a table spanning every date: all of it); returns
    puts and deletes per table."""
    written: dict[str, dict[str, int]] = {}
    for table_name, by_period in tables.items():
        table = KpiTableStore(ctx.dynamodb.Table(ctx.table_name(table_name)), table_shape(cfg, table_name))
        stats = table.replace_periods(by_period)
        written[table_name] = {"put": stats.put, "deleted": stats.deleted}
    return written


def _recompute_group(ctx: common.TaskContext, cfg: PipelineConfig, layout: Layout, store: S3Store, log: Any) -> dict[str, Any]:
    started = time.perf_counter()
    plan = common.get_json(ctx.s3, ctx.bucket, layout.transform_plan_key(ctx.batch_id))
    if not plan:
        raise RuntimeError(f"no transform plan at {layout.transform_plan_key(ctx.batch_id)}: the index step has not run")
    group, groups = int(ctx.env["KPIPE_DATE_GROUP"]), int(ctx.env.get("KPIPE_DATE_GROUPS") or plan["groups"])
    dates = date_groups(plan.get("recompute_dates", plan["dates"]), groups)[group]
    with common.work_dir("recompute") as tmp:
        tables = recompute(cfg, dates, store, Path(tmp), whole=group == 0)  # a table spanning every date: one task
    written = write_kpis(ctx, cfg, tables)
    seconds = round(time.perf_counter() - started, 3)
    emit_metrics(common.METRIC_NAMESPACE, {"Task": "transform.recompute"}, {"RecomputeSeconds": (seconds, "Seconds"),
                 "DatesRecomputed": (len(dates), "Count")}, batch_id=ctx.batch_id, group=group)
    log.info("dates_recomputed", group=group, groups=groups, dates=len(dates), seconds=seconds, kpi_items=written)
    return {"status": "recomputed", "batch_id": ctx.batch_id, "group": group, "dates": len(dates), "kpi_items": written}


def _finish(
    ctx: common.TaskContext, cfg: PipelineConfig, layout: Layout, plan: dict[str, Any], log: Any, started: float | None = None
) -> dict[str, Any]:
    started = time.perf_counter() if started is None else started
    snapshot = common.get_json(ctx.s3, ctx.bucket, layout.snapshot_key(ctx.batch_id)) or {}
    if "seq" not in plan or not snapshot.get("objects"):
        raise RuntimeError(f"batch {ctx.batch_id} has no transform plan or snapshot to finish")
    archived = common.move_all(ctx.s3, ctx.bucket, snapshot["objects"], lambda key: layout.archived_key(ctx.batch_id, key))
    if archived["missing"]:
        log.warning("archive_incomplete", missing=archived["missing"], reason="snapshot versions gone without an archived copy")

    seconds = round(time.perf_counter() - started, 3)
    report = common.load_report(ctx, layout)
    timings = dict(report.get("timings") or {})
    timings.update(transform_seconds=seconds)
    report.update(
        status="SUCCEEDED",
        stage="archived",
        seq=plan["seq"],
        dates=plan["dates"],
        rows_written=plan.get("rows_written", {}),
        rows_carried=plan.get("rows_carried", 0),
        null_key_rows=plan.get("null_key_rows", {}),
        archived=archived,
        timings=timings,
    )
    if "kpi_items" in plan:
        report["kpi_items"] = plan["kpi_items"]
    else:
        report["fanout"] = {"date_groups": plan.get("groups")}
    for stale in ("failure", "reason", "error"):
        report.pop(stale, None)
    status, extra = "SUCCEEDED", {}
    if plan.get("replay_of") is not None:  # the same rows as an earlier batch: the store and KPIs are as they were
        reason = f"already processed as seq {plan['replay_of']} (batch {plan.get('replay_batch')}): nothing changed"
        status, extra = "SKIPPED", {"reason": reason}
    report.update(status=status, **extra)
    common.save_report(ctx, layout, report)
    ctx.control.mark_batch(ctx.batch_id, status, seq=plan["seq"], report_key=layout.report_key(ctx.batch_id), dates=len(plan["dates"]), **extra)

    emit_metrics(
        common.METRIC_NAMESPACE,
        {"Task": "transform"},
        {
            "TransformSeconds": (seconds, "Seconds"),
            "DatesTouched": (len(plan["dates"]), "Count"),
            "ObjectsArchived": (archived["moved"] + archived["already"], "Count"),
        },
        batch_id=ctx.batch_id,
    )
    log.info("batch_transformed", seq=plan["seq"], dates=len(plan["dates"]), seconds=seconds, archived=archived)
    return {"status": "succeeded", "batch_id": ctx.batch_id, "seq": plan["seq"], "dates": len(plan["dates"]), "archived": archived}


def main(env: Mapping[str, str] | None = None) -> int:
    """The container's entrypoint; `env` defaults to the process environment (the local agent may pass one)."""
    return common.run_task("transform", transform, env)


if __name__ == "__main__":
    sys.exit(main())
