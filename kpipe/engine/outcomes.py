"""A file's validation outcome and a dataset's valid keys, written down for a merge in another process.

When validation fans out (a Map state of ECS tasks, each validating a group of files alone), the
merging task needs what each file's task found: its counts and reasons, the keys it claimed for
uniqueness and, for a referenced dataset, its valid keys with the values dependents look up. Those
values are typed (a date, a Decimal), so they travel as tagged JSON and come back as the same types:
`json` and an explicit type tag, never pickle (the bucket is data, not code).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from kpipe.engine.keys import KeyTable
from kpipe.engine.validate import FileOutcome


def encode(value: Any) -> Any:
    """A typed value as JSON, losslessly.

    >>> encode((date(2025, 3, 1), Decimal("1.50"), 7, "x", None))
    {'u': [{'d': '2025-03-01'}, {'n': '1.50'}, 7, 'x', None]}
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return {"n": str(value)}
    if isinstance(value, datetime):  # before date: a datetime is a date
        return {"t": value.isoformat()}
    if isinstance(value, date):
        return {"d": value.isoformat()}
    if isinstance(value, tuple):
        return {"u": [encode(v) for v in value]}
    raise TypeError(f"cannot write a {type(value).__name__} into a validation outcome: {value!r}")


def decode(obj: Any) -> Any:
    """The inverse of `encode`.

    >>> decode(encode((date(2025, 3, 1), Decimal("1.50")))) == (date(2025, 3, 1), Decimal("1.50"))
    True
    """
    if not isinstance(obj, dict):
        return obj
    tag, text = next(iter(obj.items()))
    if tag == "n":
        return Decimal(text)
    if tag == "t":
        return datetime.fromisoformat(text)
    if tag == "d":
        return date.fromisoformat(text)
    if tag == "u":
        return tuple(decode(v) for v in text)
    raise ValueError(f"unknown value tag {tag!r} in a validation outcome")


def save_outcome(outcome: FileOutcome, path: Path) -> None:
    """Everything a merge needs of one file validated alone (its part files travel beside it)."""
    document = {
        "rel": outcome.rel,
        "number": outcome.number,
        "counts": outcome.counts,
        "reasons": dict(outcome.reasons),
        "valid_part": outcome.valid_path.name,
        "rejected_part": outcome.rejected_path.name,
        "groups": outcome.groups,
        "seen": {col: [encode(k) for k, _ in table.items()] for col, table in (outcome.seen or {}).items()},
        "valid": [[encode(k), encode(v)] for k, v in outcome.valid.items()] if outcome.valid is not None else None,
    }
    path.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")


def load_outcome(path: Path, part_dir: Path) -> FileOutcome:
    """An outcome written by `save_outcome`, its part files expected in `part_dir`."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    seen: dict[str, KeyTable] = {}
    for col, keys in doc["seen"].items():
        table = seen[col] = KeyTable()
        table.put_many([decode(k) for k in keys], [True] * len(keys))
    return FileOutcome(
        doc["rel"],
        doc["number"],
        doc["counts"],
        Counter(doc["reasons"]),
        part_dir / doc["valid_part"],
        part_dir / doc["rejected_part"],
        seen=seen,
        valid=_table(doc["valid"]) if doc.get("valid") is not None else None,
        groups={value: (span[0], span[1], span[2]) for value, span in doc.get("groups", {}).items()},
    )


def save_keys(table: KeyTable, path: Path) -> None:
    """A dataset's valid keys and their lookup values, for the tasks of the datasets that reference it."""
    path.write_text(json.dumps([[encode(k), encode(v)] for k, v in table.items()], separators=(",", ":")), encoding="utf-8")


def load_keys(path: Path) -> KeyTable:
    return _table(json.loads(path.read_text(encoding="utf-8")))


def _table(pairs: list[list[Any]]) -> KeyTable:
    table = KeyTable()
    table.put_many([decode(k) for k, _ in pairs], [decode(v) for _, v in pairs])
    return table
