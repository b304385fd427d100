"""`kpipe plan`: what processing a batch against OUT would do, without changing OUT.

The batch is processed for real, on a shadow of OUT (its Parquet files hard-linked: the store only
ever replaces or unlinks files, never writes into one; everything else copied), and the shadow's KPI
tables are compared with OUT's. So the plan is, by construction, exactly what `kpipe process` then
does with the same batch, config and executor.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from chalicelib.config import PipelineConfig
from kpipe.process import process_batches
from kpipe.tables import load_table


def _link_or_copy(src: str, dst: str) -> None:
    if src.endswith(".parquet"):
        try:
            os.link(src, dst)
            return
        except OSError:  # another filesystem: a copy is as good, only slower
            pass
    shutil.copy2(src, dst)


def plan_batch(cfg: PipelineConfig, batch_dir: Path, out: Path, executor: str | None = None) -> dict[str, Any]:
    """`{"batch_id", "status", "datasets": {name: {rows_in, rows_valid, rows_rejected, reasons}},
    "tables": {name: {"created": [item], "changed": [{"key", "before", "after"}], "deleted": [item]}}}`."""
    with tempfile.TemporaryDirectory(prefix="kpipe-plan-") as tmp:
        shadow = Path(tmp) / "out"
        if Path(out).exists():
            shutil.copytree(out, shadow, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("work"))
        report = process_batches(cfg, [Path(batch_dir)], shadow, executor=executor)["batches"][0]
        tables = {name: table_changes(load_table(Path(out) / f"{name}.json"), load_table(shadow / f"{name}.json"), spec.key)
                  for name, spec in cfg.kpis.items()}
    datasets = {name: {k: stats[k] for k in ("rows_in", "rows_valid", "rows_rejected", "reasons")} for name, stats in report["datasets"].items()}
    plan: dict[str, Any] = {"batch_id": report["batch_id"], "status": report["status"], "datasets": datasets, "tables": tables}
    if report.get("reason"):
        plan["reason"] = report["reason"]
    return plan


def table_changes(before: list[dict[str, Any]], after: list[dict[str, Any]], key: list[str]) -> dict[str, list[Any]]:
    """Items created, changed (key, before, after) and deleted from one version of a table to the next."""
    def keyed(items: list[dict[str, Any]]) -> dict[tuple[str, ...], dict[str, Any]]:
        return {tuple(str(i.get(k)) for k in key): i for i in items}

    old, new = keyed(before), keyed(after)
    return {
        "created": [new[k] for k in sorted(new.keys() - old.keys())],
        "changed": [{"key": {f: new[k].get(f) for f in key}, "before": old[k], "after": new[k]}
                    for k in sorted(new.keys() & old.keys()) if old[k] != new[k]],
        "deleted": [old[k] for k in sorted(old.keys() - new.keys())],
    }
