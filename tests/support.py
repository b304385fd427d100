"""Helpers shared by test modules that import them directly (hypothesis tests cannot take fixtures)."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any


def examples(dev: int) -> int:
    """How many examples an engine-driven property draws: `dev` on a laptop, half in CI (the `ci`
    hypothesis profile is derandomised, so its examples are the same every run; the suite must stay
    within its time budget on two cores)."""
    return dev // 2 if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else dev


def read_kpis(out: Path) -> tuple[dict[str, dict[str, Decimal]], dict[tuple[str, str], dict[str, Decimal]]]:
    """OUT/OrderKPI.json and OUT/CategoryKPI.json keyed like the oracle's result, numbers as Decimal."""
    def load(name: str) -> list[dict[str, Any]]:
        return json.loads((out / name).read_text(encoding="utf-8"), parse_float=Decimal, parse_int=Decimal)

    orders = {i.pop("order_date"): i for i in load("OrderKPI.json")}
    cats = {}
    for item in load("CategoryKPI.json"):
        cats[(item.pop("category"), item.pop("order_date"))] = item
    return orders, cats


def read_valid(path: Path) -> list[dict[str, str]]:
    """A validated Parquet file's rows as text, for assertions: ints as digits, decimals with at least
    two places (`9.50`), datetimes and dates in ISO form, bools as true/false, null as ''."""
    import pyarrow.parquet as pq

    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, Decimal):
            plain = format(value.normalize(), "f")
            whole, _, frac = plain.partition(".")
            return f"{whole}.{frac.ljust(2, '0')}"
        if hasattr(value, "isoformat"):
            return value.isoformat()
        return str(value)

    if not path.exists():
        return []
    return [{k: text(v) for k, v in row.items()} for row in pq.read_table(path).to_pylist()]
