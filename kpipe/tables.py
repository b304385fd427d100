"""KPI tables as local JSON files (`OUT/OrderKPI.json`, `OUT/CategoryKPI.json`).

Both `kpipe process` and `kpipe run` end here, so they must write numbers the same way: DynamoDB
normalises `40.00` to `40`, so a Decimal is written as a JSON integer when it is integral and as
a JSON number with its decimals otherwise - identical text from either path. Numbers are written
exactly as their decimal text (`json` would go through a binary float: a 25-digit revenue became
`1.2345678901234568e+24`); read them back with `parse_float=Decimal`.
"""

from __future__ import annotations

import json
import math
from decimal import Context, Decimal
from pathlib import Path
from typing import Any, TextIO


def json_number(value: Any) -> Any:
    """Integral Decimals as ints, the others kept exact (written by `dumps`)."""
    if isinstance(value, Decimal):
        return int(value) if value.is_finite() and value == value.to_integral_value() else value
    if isinstance(value, dict):
        return {k: json_number(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_number(v) for v in value]
    return value


def load_table(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)


def table_view(path: Path, limit: int) -> tuple[int, list[dict[str, Any]], set[str]]:
    """(how many items, the first `limit` of them, every field any item has) of a saved table, its
    items decoded one at a time: the human view of a table of a batch spanning years (tens of
    thousands of items) needs neither all of them at once nor their Decimals."""
    if not path.exists():
        return 0, [], set()
    text = path.read_text(encoding="utf-8")
    first = json.JSONDecoder(parse_float=Decimal)
    rest = json.JSONDecoder(parse_float=str, parse_int=str)
    count, items, fields = 0, [], set()
    pos = text.index("[") + 1
    while True:
        pos = _skip(text, pos)
        if text[pos] == "]":
            return count, items, fields
        item, pos = (first if count < limit else rest).raw_decode(text, pos)
        fields.update(item)
        if count < limit:
            items.append(item)
        count += 1
        pos = _skip(text, pos)
        if text[pos] == ",":
            pos += 1


def _skip(text: str, pos: int) -> int:
    while text[pos] in " \t\r\n":
        pos += 1
    return pos


def save_table(path: Path, items: list[dict[str, Any]], key_fields: list[str]) -> None:
    """Write the table sorted by its key, as `json.dumps(rows, indent=1, sort_keys=True)` would.

    Items are converted and written a slice at a time: a batch spanning years has tens of thousands
    of items, and a converted copy of all of them plus their text was the run's peak of memory."""
    fields = [str(k) for k in key_fields]
    rows = sorted(items, key=lambda item: tuple(str(json_number(item.get(k, ""))) for k in fields))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        try:
            _write_items(fh, rows)
        except _NotFlat:
            fh.seek(0)
            fh.truncate()
            fh.write(dumps(rows))
        fh.write("\n")
    tmp.replace(path)


_WIDE = Context(prec=1000)  # normalising must not round: a value may have up to 38 digits and more


def decimal_text(value: Decimal) -> str:
    """The exact text of a number, trailing zeros dropped as DynamoDB drops them (`0.10` -> `0.1`)."""
    return f"{value.normalize(_WIDE):f}"


def dumps(value: Any, indent: int | None = 1, level: int = 0) -> str:
    """`json.dumps(value, indent=indent, sort_keys=True)` with Decimals written exactly (integral
    ones as integers): every JSON kpipe writes that may hold a KPI number goes through here."""
    value = json_number(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        return decimal_text(value)
    if isinstance(value, dict | list | tuple) and value:
        pairs = (
            [f"{json.dumps(str(k))}: {dumps(v, indent, level + 1)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))]
            if isinstance(value, dict)
            else [dumps(v, indent, level + 1) for v in value]
        )
        start, end = "{}" if isinstance(value, dict) else "[]"
        if indent is None:
            return start + ", ".join(pairs) + end
        inner, outer = "\n" + " " * (indent * (level + 1)), "\n" + " " * (indent * level)
        return start + inner + ("," + inner).join(pairs) + outer + end
    return json.dumps(value, default=str)


def _write_items(fh: TextIO, rows: list[dict[str, Any]]) -> None:
    """`json.dumps(rows, indent=1, sort_keys=True)`, the same text, for a list of flat items (else
    `_NotFlat`).

    Why: with an indent, `json` leaves its C encoder for a generator per level and value; a table of
    a batch spanning years (~50k items) took ~0.4 s that way, serially at the end of the run. Items
    holding anything but str keys and str, int, Decimal, finite float, bool or None values go to `dumps`."""
    if not rows:
        fh.write("[]")
        return
    fh.write("[\n")
    for start in range(0, len(rows), _ITEMS_AT_ONCE):
        if start:
            fh.write(",\n")
        fh.write(",\n".join(_dump_item(json_number(item)) for item in rows[start : start + _ITEMS_AT_ONCE]))
    fh.write("\n]")


_ITEMS_AT_ONCE = 1024


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
        elif kind is Decimal and value.is_finite():
            text = decimal_text(value)
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


def replace_periods(
    items: list[dict[str, Any]], new_by_period: dict[str, list[dict[str, Any]]], period_field: str | None
) -> list[dict[str, Any]]:
    """The table with every item of the given periods replaced by the new set (possibly empty); a
    table without a period field (`{"*": items}`) is replaced whole."""
    if period_field is None:
        return list(new_by_period.get("*", items))
    kept = [i for i in items if str(i.get(period_field)) not in new_by_period]
    for new_items in new_by_period.values():
        kept.extend(new_items)
    return kept
