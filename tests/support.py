"""Helpers shared by test modules that import them directly (hypothesis tests cannot take fixtures)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any


def read_kpis(out: Path) -> tuple[dict[str, dict[str, Decimal]], dict[tuple[str, str], dict[str, Decimal]]]:
    """OUT/OrderKPI.json and OUT/CategoryKPI.json keyed like the oracle's result, numbers as Decimal."""
    def load(name: str) -> list[dict[str, Any]]:
        return json.loads((out / name).read_text(encoding="utf-8"), parse_float=Decimal, parse_int=Decimal)

    orders = {i.pop("order_date"): i for i in load("OrderKPI.json")}
    cats = {}
    for item in load("CategoryKPI.json"):
        cats[(item.pop("category"), item.pop("order_date"))] = item
    return orders, cats
