"""What both executors agree on about a CSV file: its header, what a record is, where rejected ones go.

The grammar is RFC 4180 read strictly, as DuckDB's `strict_mode` reads it and Python's csv module
with `strict=True`: a record with a stray character after a closing quote, an unterminated quote, or
another number of fields than the header has is malformed (`row.malformed`); one holding bytes that
are not UTF-8 is `row.encoding`. Records are numbered as DuckDB numbers them: the header is 1, and a
blank line is a record number but not a row. A rejected record's original text is read back with
Python's csv module (leniently, from the record's first byte), so both executors report the same.
"""

from __future__ import annotations

import csv
import json
import mmap
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kpipe.engine.plan import ENCODING, MALFORMED, DatasetPlan
from kpipe.engine.vocabulary import WHITESPACE

BOM = b"\xef\xbb\xbf"
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _lines(path: Path, start: int = 0) -> Iterator[tuple[int, str]]:
    """(byte offset, decoded line) of each physical line; bad bytes kept as lone surrogates."""
    with open(path, "rb") as fh:
        fh.seek(start)
        offset = start
        for raw in fh:
            if offset == 0 and raw.startswith(BOM):
                raw, offset = raw[len(BOM) :], len(BOM)
            yield offset, raw.decode("utf-8", errors="surrogateescape")
            offset += len(raw)


def header(path: Path) -> list[str]:
    """The header's names, stripped (the BOM too)."""
    for rec in csv.reader((line for _, line in _lines(path))):
        return [h.strip(WHITESPACE) for h in rec]
    return []


def records(path: Path) -> Iterator[tuple[int, int, list[str] | None, str | None]]:
    """`(line, byte offset, fields, problem)` for each record after the header, as the reference
    executor reads them: `problem` is `row.malformed` or `row.encoding` (fields None) or None. Blank
    lines count as record numbers and yield nothing."""
    starts: list[int] = []

    def feed() -> Iterator[str]:
        for offset, text in _lines(path):
            starts.append(offset)
            yield text

    reader = csv.reader(feed(), strict=True)
    width, line, consumed = None, 0, 0
    while True:
        try:
            rec = next(reader)
            problem = None
        except StopIteration:
            return
        except csv.Error:
            rec, problem = None, MALFORMED
        line += 1
        offset = starts[consumed] if consumed < len(starts) else 0
        consumed = len(starts)
        if width is None:
            width = len(rec or [])
            continue
        if rec is None:
            yield line, offset, None, problem
        elif not rec:
            continue
        elif _UNDECODABLE.search("\x00".join(rec)):
            yield line, offset, None, ENCODING
        elif len(rec) != width:
            yield line, offset, None, MALFORMED
        else:
            yield line, offset, rec, None


def record_at(path: Path, offset: int) -> list[str]:
    """The fields of the record starting at byte `offset` (blank lines before it skipped), read
    leniently: what a rejected record held, for the rejected file."""
    lines = (line for _, line in _lines(path, offset))
    for rec in csv.reader(lines):
        if rec:
            return rec
    return []


def rejected_columns(ds: DatasetPlan) -> list[str]:
    return ["_file", "_line", "_reasons", *(c.name for c in ds.columns), "_other"]


def rejected_row(file: str, line: int, reasons: Sequence[str], names: Sequence[str], fields: Sequence[str], ds: DatasetPlan) -> list[str]:
    """One line of the rejected file: where it was, why, the declared columns' original texts, and
    the other columns as JSON (a record with more fields than names keeps them under `_extra`)."""
    by_name: dict[str, str] = {}
    other: dict[str, Any] = {}
    declared = {c.header for c in ds.columns}
    for i, value in enumerate(fields):
        name = names[i] if i < len(names) else None
        if name is None:
            other.setdefault("_extra", []).append(value)
        elif name in declared and name not in by_name:
            by_name[name] = value
        else:
            other[name] = value
    values = [by_name.get(c.header, "") for c in ds.columns]
    return [file, str(line), ";".join(reasons), *values, json.dumps(other, ensure_ascii=False) if other else ""]


def write_rejected(path: Path, ds: DatasetPlan, rows: Iterator[list[str]] | list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(rejected_columns(ds))
        out.writerows(rows)


def interior_blank(path: Path) -> bool:
    """Might a blank line sit between records? (DuckDB skips blank lines yet counts them in record
    numbers, so only then are its kept rows not numbered by their order.) A quoted field holding one
    also says yes: the answer only chooses the exact slow way of numbering."""
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        if size == 0:
            return False
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            end = size
            while end > 0 and data[end - 1] in b"\r\n":
                end -= 1
            return data.find(b"\n\n", 0, end) >= 0 or data.find(b"\n\r\n", 0, end) >= 0
