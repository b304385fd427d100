"""The quality history of an OUT: one JSON line per processed batch in `OUT/history.jsonl`, appended
as it ends (report.json holds only the last call's batches), read back by `kpipe history`.

A line: `{"batch_id", "seq", "at", "status", "datasets": {name: {"rows_in", "rows_valid",
"rows_rejected", "reasons"}}, "checks": []}` (`checks`: the outcomes of dataset- and table-level
checks, none declared yet), oldest first.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HISTORY = "history.jsonl"
BARS = "▁▂▃▄▅▆▇█"


def entry(report: dict[str, Any], at: datetime | None = None) -> dict[str, Any]:
    """The history line of one batch's report."""
    datasets = {
        name: {k: stats[k] for k in ("rows_in", "rows_valid", "rows_rejected", "reasons")}
        for name, stats in report.get("datasets", {}).items()
    }
    return {
        "batch_id": report["batch_id"],
        "seq": report.get("seq"),
        "at": (at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "status": report.get("status"),
        "datasets": datasets,
        "checks": list(report.get("checks", [])),
    }


def append(out: Path, report: dict[str, Any]) -> None:
    with open(Path(out) / HISTORY, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry(report), sort_keys=True) + "\n")


def read(out: Path, dataset: str | None = None, rule: str | None = None) -> list[dict[str, Any]]:
    """The history, oldest first; `dataset` keeps that dataset's counts only, `rule` the batches in
    which that rule rejected a row (its count kept, the other reasons dropped)."""
    path = Path(out) / HISTORY
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.exists() else []
    for line in lines:
        if dataset is not None:
            line["datasets"] = {k: v for k, v in line["datasets"].items() if k == dataset}
        if rule is not None:
            for stats in line["datasets"].values():
                stats["reasons"] = {r: n for r, n in stats["reasons"].items() if r == rule}
    if rule is not None:
        lines = [line for line in lines if any(s["reasons"] for s in line["datasets"].values())]
    return lines


def rejected_fraction(line: dict[str, Any]) -> float:
    rows = sum(s["rows_in"] for s in line["datasets"].values())
    return sum(s["rows_rejected"] for s in line["datasets"].values()) / rows if rows else 0.0


def sparkline(values: list[float]) -> str:
    """A trend in eight block heights, scaled to the largest value (all zero: the lowest bar)."""
    top = max(values, default=0.0)
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))] if top else BARS[0] for v in values)
