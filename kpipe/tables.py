"""KPI tables as local JSON files (`OUT/OrderKPI.json`, `OUT/CategoryKPI.json`).

Both `kpipe process` and `kpipe run` end here, so they must write numbers the same way: DynamoDB
normalises `40.00` to `40`, so a Decimal is written as a JSON integer when it is integral and as
a JSON number with its decimals otherwise - identical text from either path.
"""

from __future__ import annotations

import json
import math
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
    tmp.write_text(dump_items(rows) + "\n", encoding="utf-8")
    tmp.replace(path)


def dump_items(rows: list[dict[str, Any]]) -> str:
    """`json.dumps(rows, indent=1, sort_keys=True)`, the same text, for a list of flat items.

    Why: with an indent, `json` leaves its C encoder for a generator per level and value; a table of
    a batch spanning years (~50k items) took ~0.4 s that way, serially at the end of the run. Items
    holding anything but str keys and str, int, finite float, bool or None values go to `json`."""
    try:
        return "[\n" + ",\n".join(map(_dump_item, rows)) + "\n]" if rows else "[]"
    except _NotFlat:
        return json.dumps(rows, indent=1, sort_keys=True)


class _NotFlat(Exception):
    pass


_LITERALS = {True: "true", False: "false"}
_ENCODE_STR = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _dump_item(item: dict[str, Any]) -> str:
    if type(item) is not dict or not item:
        raise _NotFlat
    fields = []
    for key in sorted(item):
        value = item[key]
        kind = type(value)
        if type(key) is not str:
            raise _NotFlat
        if kind is str:
            text = _ENCODE_STR(value)
        elif kind is int:
            text = int.__repr__(value)
        elif kind is float and math.isfinite(value):
            text = float.__repr__(value)
        elif kind is bool:
            text = _LITERALS[value]
        elif value is None:
            text = "null"
        else:
            raise _NotFlat
        fields.append(f"  {_ENCODE_STR(key)}: {text}")
    return " {\n" + ",\n".join(fields) + "\n }"


def replace_dates(
    items: list[dict[str, Any]], new_by_date: dict[str, list[dict[str, Any]]], date_field: str
) -> list[dict[str, Any]]:
    """The table with every item of the given dates replaced by the new set (possibly empty)."""
    kept = [i for i in items if i.get(date_field) not in new_by_date]
    for new_items in new_by_date.values():
        kept.extend(new_items)
    return kept
