"""What a pipeline.yaml edit means for the data already processed.

The store remembers the config its last batch ran under (`_meta/config.json`, a summary of the
datasets' columns and derived fields and of the KPI tables). `kpipe check-config --against OUT` compares
the config in force with it and says, per change, what reaches older dates by itself and what needs a
backfill: the next batch computes every date it touches under the new config (stored rows are read by
column name and their derived fields computed again), but the dates no batch touches keep their items.
"""

from __future__ import annotations

import json
from typing import Any

from chalicelib.config import PipelineConfig

CONFIG = "_meta/config.json"


def config_summary(cfg: PipelineConfig) -> dict[str, Any]:
    return {
        "datasets": {
            name: {
                "columns": {c: col.model_dump(mode="json", exclude={"checks"}) for c, col in ds.columns.items()},
                "checks": {c: [k.model_dump(mode="json", exclude_none=True) for k in col.checks] for c, col in ds.columns.items()},
                "derived": {d: spec.model_dump(mode="json", exclude_none=True) for d, spec in ds.derived.items()},
                # a dataset's row checks, only when it has some (a summary stored before they existed stays equal)
                **({"row_checks": [k.model_dump(mode="json", exclude_none=True) for k in ds.checks]} if ds.checks else {}),
            }
            for name, ds in cfg.datasets.items()
        },
        "kpis": {name: table.model_dump(mode="json", by_alias=True, exclude_none=True) for name, table in cfg.kpis.items()},
    }


def backfill_notes(before: dict[str, Any], cfg: PipelineConfig) -> list[str]:
    """One line per change since `before`, with its YAML path and what it means for older dates."""
    now = config_summary(cfg)
    notes: list[str] = []
    old_ds, new_ds = before.get("datasets", {}), now["datasets"]
    for name in sorted(new_ds.keys() - old_ds.keys()):
        notes.append(f"datasets.{name}: new dataset; older batches had none of its rows (a backfill of archived batches brings them)")
    for name in sorted(new_ds.keys() & old_ds.keys()):
        was, is_ = old_ds[name], new_ds[name]
        for col in sorted(is_["columns"].keys() - was["columns"].keys()):
            notes.append(
                f"datasets.{name}.columns.{col}: new column; rows stored before hold null for it on every date"
                " until a backfill re-reads their raw files"
            )
        for col in sorted(is_["columns"].keys() & was["columns"].keys()):
            if is_["columns"][col] != was["columns"][col] or is_["checks"].get(col) != was["checks"].get(col):
                notes.append(
                    f"datasets.{name}.columns.{col}: rules changed; they apply to rows of new batches, rows stored"
                    " before were decided under the old ones (a backfill re-decides them)"
                )
        if is_.get("row_checks", []) != was.get("row_checks", []):
            notes.append(
                f"datasets.{name}.checks: row checks changed; they apply to rows of new batches, rows stored"
                " before were decided under the old ones (a backfill re-decides them)"
            )
        for d in sorted(set(is_["derived"]) | set(was["derived"])):
            if is_["derived"].get(d) != was["derived"].get(d):
                notes.append(
                    f"datasets.{name}.derived.{d}: {'new' if d not in was['derived'] else 'changed'} derived field;"
                    " computed again for every date a batch touches, older dates need a backfill"
                )
    old_k, new_k = before.get("kpis", {}), now["kpis"]
    for table in sorted(set(old_k) | set(new_k)):
        if old_k.get(table) != new_k.get(table):
            what = "new table" if table not in old_k else "removed table" if table not in new_k else "changed table"
            notes.append(f"kpis.{table}: {what}; dates a batch touches get it, older dates need a backfill")
    return notes


def dump(cfg: PipelineConfig) -> str:
    return json.dumps(config_summary(cfg), indent=1, sort_keys=True) + "\n"
