"""KPI tables as local JSON files (`OUT/OrderKPI.json`, `OUT/CategoryKPI.json`).

Both `kpipe process` and `kpipe run` end here, so they must write numbers the same way: DynamoDB
normalises `40.00` to `40`, so a Decimal is written as a JSON integer when it is integral and as
a JSON number with its decimals otherwise - identical text from either path.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any


def json_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: json_number(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_number(v) for v in value]
    return value


def item_sort_key(key_fields: list[str]) -> Any:
    return lambda item: tuple(str(item.get(k, "")) for k in key_fields)


def load_table(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)


def save_table(path: Path, items: list[dict[str, Any]], key_fields: list[str]) -> None:
    rows = sorted((json_number(i) for i in items), key=item_sort_key(key_fields))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def replace_dates(
    items: list[dict[str, Any]], new_by_date: dict[str, list[dict[str, Any]]], date_field: str
) -> list[dict[str, Any]]:
    """The table with every item of the given dates replaced by the new set (possibly empty)."""
    kept = [i for i in items if i.get(date_field) not in new_by_date]
    for new_items in new_by_date.values():
        kept.extend(new_items)
    return kept
