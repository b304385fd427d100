"""ECS task 3 (`python -m ecs_tasks.finalize`): record how a batch ended when it did not succeed.

`KPIPE_FINALIZE_STATUS` (set by the state machine) says which way:
- `failed` (the Catch branch): the report is marked FAILED with the error (`KPIPE_FAILURE`, the
  state machine's `{"Error", "Cause"}` as JSON). The raw files stay in `raw-data/`, where a rerun
  (`POST /batches/{id}/rerun`, or the next upload) finds them.
- `rejected` (a reject threshold of pipeline.yaml was exceeded): the report is marked FAILED with the
  threshold problems, and the snapshot's raw files move to `quarantine/<batch_id>/` so they do not
  join the next batch; the rejected rows with their reasons are in `rejected/<batch_id>/`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from chalicelib.layout import Layout
from chalicelib.obs import emit_metrics
from ecs_tasks import common

STATUSES = ("failed", "rejected")


def finalize(ctx: common.TaskContext, log: Any) -> dict[str, Any]:
    status = ctx.env.get("KPIPE_FINALIZE_STATUS", "failed")
    if status not in STATUSES:
        raise ValueError(f"KPIPE_FINALIZE_STATUS={status!r}; allowed: {', '.join(STATUSES)}")
    failure = _failure(ctx.env.get("KPIPE_FAILURE", ""))
    cfg = ctx.config()
    layout = Layout.from_config(cfg)
    s3, bucket = ctx.s3, ctx.bucket
    report = common.load_report(ctx, layout)

    if status == "rejected":
        snapshot = common.get_json(s3, bucket, layout.snapshot_key(ctx.batch_id)) or {}
        moved = common.move_all(s3, bucket, snapshot.get("objects", []), lambda key: layout.quarantine_key(ctx.batch_id, key))
        problems = failure.get("threshold_problems") or report.get("threshold_problems") or []
        error = {"Error": "Kpipe.ThresholdExceeded", "Cause": "; ".join(problems) or "reject threshold exceeded"}
        report.update(status="FAILED", stage="rejected", failure=error, reasons=problems, quarantined_raw=moved)
        log.warning("batch_rejected", problems=problems, quarantined=moved)
    else:
        error = {"Error": str(failure.get("Error", "Kpipe.Unknown")), "Cause": str(failure.get("Cause", ""))[:4000]}
        report.update(status="FAILED", stage="failed", failure=error, raw_files="kept in raw-data/ for a rerun")
        log.error("batch_failed", error=error["Error"], cause=error["Cause"][:1000])

    common.save_report(ctx, layout, report)
    ctx.control.mark_batch(ctx.batch_id, "FAILED", error=error["Error"], report_key=layout.report_key(ctx.batch_id))
    emit_metrics(
        common.METRIC_NAMESPACE,
        {"Task": "finalize"},
        {"BatchesFailed": (int(status == "failed"), "Count"), "BatchesRejected": (int(status == "rejected"), "Count")},
        batch_id=ctx.batch_id,
    )
    return {"status": status, "batch_id": ctx.batch_id, "error": error["Error"]}


def _failure(text: str) -> dict[str, Any]:
    """The JSON the state machine passes; a non-JSON value is kept as the cause rather than lost."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"Cause": text}
    return value if isinstance(value, dict) else {"Cause": text}


def main(env: Mapping[str, str] | None = None) -> int:
    """The container's entrypoint; `env` defaults to the process environment (the local agent may pass one)."""
    return common.run_task("finalize", finalize, env)


if __name__ == "__main__":
    sys.exit(main())
