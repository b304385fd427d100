"""What an executor hands back, and the shared last step from aggregates to stored KPI items.

Executors decide (which rows are valid, each group's aggregates); this module turns the aggregates
into items the same way for both: combining kinds (`ratio`) from the unrounded values, rounding
half-up once, intermediates (`store: false`) dropped, numbers exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kpipe.engine.plan import DatasetPlan, TablePlan
from kpipe.engine.vocabulary import plain_number, round_half_up

# per group key (key fields as text), per aggregate metric, its value (None: no value in the group)
GroupValues = dict[tuple[str, ...], dict[str, Any]]


@dataclass
class DatasetResult:
    rows_valid: int
    rows_rejected: int
    reasons: dict[str, int]
    valid_path: Path
    files: dict[str, dict[str, int]] = field(default_factory=dict)  # per file: rows_in, rows_valid, rows_rejected

    @property
    def rows_in(self) -> int:
        return self.rows_valid + self.rows_rejected

    def report(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_valid": self.rows_valid, "rows_rejected": self.rows_rejected, "reasons": self.reasons}


def file_problems(ds: DatasetPlan, names: list[str]) -> list[str]:
    """Reasons every row of a file gets from its header alone: a required column it lacks, a
    declared column it names twice."""
    out = []
    for c in ds.columns:
        if c.required and c.header not in names:
            out.append(f"{c.name}.missing_column")
        if names.count(c.header) > 1:
            out.append(f"{c.name}.duplicate_column")
    return out


def finish_items(table: TablePlan, groups: GroupValues) -> list[dict[str, Any]]:
    items = []
    for key in sorted(groups):
        found = groups[key]
        values: dict[str, Any] = {}
        for m in table.metrics:
            if m.term.combines:
                values[m.name] = m.term.py([values[o] for o in m.operands])
            else:
                value = found.get(m.name)
                values[m.name] = m.term.empty if value is None else value
        item: dict[str, Any] = dict(zip(table.key, key, strict=True))
        for m in table.metrics:
            value = values[m.name]
            if not m.store or value is None:
                continue
            item[m.name] = round_half_up(value, m.round) if m.round is not None else plain_number(value)
        items.append(item)
    return items
