"""What both executors agree on about a CSV file: its header, what a record is, where rejected ones go.

A file's records are what Python's csv module reads from it (RFC 4180, read leniently: a stray
character after a closing quote is kept, `"ab"c` is `abc`); a record with fewer fields than the
header has nulls for the rest, one with more keeps the surplus only in the rejected file. A record
holding bytes that are not UTF-8 is rejected as `row.encoding`. Records are numbered as DuckDB numbers
them: the header is 1, and a blank line is a record number but not a row. The DuckDB executor reads
the well-formed records of a file itself and asks this module only for the records its strict reader
refused, so both executors see the same rows.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpipe.engine.plan import ENCODING, MALFORMED, DatasetPlan
from kpipe.engine.vocabulary import WHITESPACE

BOM = b"\xef\xbb\xbf"
csv.field_size_limit(sys.maxsize)  # a field is as long as the file says (DuckDB has no such limit either)
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_PADDED = re.compile(rb'[,\n] +"|" +(?:[,\r\n]|\Z)')


def _lines(path: Path, start: int = 0) -> Iterator[tuple[int, str]]:
    """(byte offset, decoded line) of each physical line, ended by LF, CRLF or a lone CR (as the csv
    module reads a file opened with newline=''); bad bytes kept as lone surrogates."""
    with open(path, "rb") as fh:
        fh.seek(start)
        offset = start
        for raw in fh:
            if offset == 0 and raw.startswith(BOM):
                raw, offset = raw[len(BOM) :], len(BOM)
            for line in raw.splitlines(keepends=True) if b"\r" in raw else (raw,):
                yield offset, line.decode("utf-8", errors="surrogateescape")
                offset += len(line)


def header(path: Path) -> list[str]:
    """The header's names, stripped (the BOM too)."""
    for rec in csv.reader((line for _, line in _lines(path))):
        return [h.strip(WHITESPACE) for h in rec]
    return []


def records(path: Path) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """`(line, fields, problem)` for each record after the header: `problem` is `row.encoding` (the
    fields then hold the bad bytes as lone surrogates) or `row.malformed` where the csv module itself
    gives up (no fields), else None. Blank lines count as record numbers and yield nothing."""
    reader = csv.reader(line for _, line in _lines(path))
    line = 0
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error:
            line += 1
            yield line, None, MALFORMED
            continue
        line += 1
        if line == 1 or not rec:
            continue
        if _UNDECODABLE.search("\x00".join(rec)):
            yield line, rec, ENCODING
        else:
            yield line, rec, None


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


@dataclass(frozen=True)
class Survey:
    utf8: bool  # every byte decodes (DuckDB checks only the columns it reads)
    newlines: int  # line ends (LF, CRLF, a lone CR; an unended last line counts too): as many as header +
    # rows means no blank line and no quoted line break
    padded_quote: bool  # a space between a quote and a field's edge: DuckDB drops it, csv keeps it


def survey(path: Path, piece: int = 1 << 24) -> Survey:
    """One pass over a file's bytes, a piece at a time (memory stays flat), with one-byte scans
    (memchr speed) deciding whether slower ones are needed at all."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    utf8, padded, edge, newlines, last = True, False, b"", 0, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(piece):
            if utf8 and not chunk.isascii():  # the usual export is ASCII
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    utf8 = False
            newlines += chunk.count(b"\n")
            if b"\r" in chunk:  # (a CRLF split between pieces counts twice: the slower way)
                newlines += chunk.count(b"\r") - chunk.count(b"\r\n")
            last = chunk[-1:]
            if not padded and b'"' in chunk:  # (a space run longer than the overlap at a piece's edge is past caring)
                near = edge + chunk
                padded = (b' "' in near or b'" ' in near) and _PADDED.search(near) is not None
            edge = chunk[-4096:]
    if utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8 = False
    return Survey(utf8, newlines + (last not in (b"", b"\n", b"\r")), padded)


def blank_line_inside(path: Path, piece: int = 1 << 24) -> bool:
    """Might a blank line sit between records? (DuckDB skips blank lines yet counts them in record
    numbers, so only then are its rows not numbered by their order.) A quoted field holding one also
    says yes: the answer only chooses the exact, slower way. Asked only of a file whose line breaks
    are not one a record."""
    tail = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(piece):
            body = (tail + chunk).rstrip(b"\r\n") if len(chunk) < piece else tail + chunk
            if b"\n\n" in body or b"\n\r" in body or b"\r\r" in body:  # a lone CR ends a line too
                return True
            tail = chunk[-2:]
    return False
