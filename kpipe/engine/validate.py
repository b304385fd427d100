"""Validate one batch (ECS task 1's logic): raw CSV files in, valid and rejected rows plus a report out.

Each raw file is streamed once: petl's `fromcsv` reads its header and, when the file has quotes,
NUL bytes or bare CR line ends, its rows (the csv module handles them); a plain file (the usual
export) is read a block at a time by splitting it (`_plain_blocks`: a block whose lines all have the
header's width in one split, `FlatRows`), which gives the same rows two to three times as fast. The
compiled `FileRules` decide a chunk of rows at a time; rejected rows go to the rejected file with their file,
line and reasons, in line order. Valid rows are written in canonical text, a partitioned dataset's
grouped by date (`_GroupSpill`). Memory holds only the key tables that uniqueness, references and
lookups need and one chunk, never the file.

With worker processes, big plain files are cut into pieces of whole rows (pieces.py); files and
pieces are validated alone and merged in order (`merge_outcomes`), which decides exactly as one pass.

Datasets run in dependency order (a referenced dataset first), so an item is checked against the
orders and products already found valid: a rejected order rejects its items (the cascade).
"""

from __future__ import annotations

import codecs
import csv
import json
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
from operator import itemgetter, methodcaller
from pathlib import Path
from typing import Any, BinaryIO

import petl

from chalicelib.config import PipelineConfig
from chalicelib.layout import Layout
from kpipe.engine import prefetch
from kpipe.engine.csvio import TERMINATOR, FlatRows, groups_path, read_bytes, rows_as_lines, split_fields, write_columns
from kpipe.engine.keys import KeyBits, KeySpan, KeyTable
from kpipe.engine.pieces import Piece, cut, plain_block
from kpipe.engine.rules import BatchRefs, FileRules

REJECT_META = ["_file", "_line", "_reasons"]
CHUNK_ROWS = 2048  # rows decided together: big enough to amortise per-column calls, small enough to stay in cache


def dataset_files(cfg: PipelineConfig, raw_dir: Path) -> dict[str, list[str]]:
    """Relative paths below raw_dir for each dataset, in key (lexicographic) order."""
    layout = Layout.from_config(cfg)
    found: dict[str, list[str]] = {name: [] for name in cfg.datasets}
    if raw_dir.exists():
        for path in raw_dir.rglob("*"):
            if path.is_file():
                rel = path.relative_to(raw_dir).as_posix()
                name = layout.dataset_of(layout.raw_prefix + rel)
                if name is not None:
                    found[name].append(rel)
    return {name: sorted(files) for name, files in found.items()}


def validated_header(cfg: PipelineConfig, dataset: str) -> list[str]:
    return cfg.datasets[dataset].fields()


def validate_batch(
    cfg: PipelineConfig, raw_dir: Path, out_dir: Path, batch_id: str, workers: int = 1, keep_spills: bool = False
) -> dict[str, Any]:
    """`keep_spills`: the validated files stay on this machine for a transform here, which may read
    their rows where validation spilled them (under `out_dir/parts/`, kept until `out_dir` goes)
    instead of from a copy (see `_join_groups`)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    (out_dir / "validated").mkdir(parents=True, exist_ok=True)
    (out_dir / "rejected").mkdir(parents=True, exist_ok=True)
    files = dataset_files(cfg, raw_dir)
    refs = BatchRefs(cfg)
    report: dict[str, Any] = {
        "batch_id": batch_id,
        "datasets": {},
        "files": {},
        "threshold_exceeded": False,
        "threshold_problems": [],
    }
    for name in cfg.dataset_order():
        stats, per_file = _validate_dataset(cfg, name, raw_dir, files[name], out_dir, refs, workers, keep_spills)
        report["datasets"][name] = stats
        report["files"].update(per_file)
    report["threshold_problems"] = threshold_problems(cfg, report["datasets"])
    report["threshold_exceeded"] = bool(report["threshold_problems"])
    return report


def threshold_problems(cfg: PipelineConfig, datasets: dict[str, dict[str, Any]]) -> list[str]:
    """One line per dataset whose rejected fraction is above its `reject_threshold`."""
    problems = []
    for name, stats in datasets.items():
        threshold = cfg.datasets[name].reject_threshold
        if threshold is not None and stats["rows_in"]:
            fraction = stats["rows_rejected"] / stats["rows_in"]
            if fraction > threshold:
                problems.append(
                    f"{name}: {stats['rows_rejected']} of {stats['rows_in']} rows rejected "
                    f"({fraction:.2%}) > reject_threshold {threshold}"
                )
    return problems


def _validate_dataset(
    cfg: PipelineConfig,
    name: str,
    raw_dir: Path,
    rels: list[str],
    out_dir: Path,
    refs: BatchRefs,
    workers: int,
    keep_spills: bool = False,
) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    part_dir = out_dir / "parts" / name
    shutil.rmtree(part_dir, ignore_errors=True)
    part_dir.mkdir(parents=True)
    valid_keys = KeyTable()
    jobs = _jobs(raw_dir, rels, workers) if workers > 1 else []
    if len(jobs) > 1:
        outcomes = _validate_files_in_processes(cfg, name, raw_dir, jobs, part_dir, refs, workers, valid_keys)
    else:
        seen: dict[str, KeyTable] = {}
        outcomes = [
            _validate_file(cfg, name, raw_dir, i, rel, part_dir, refs, seen, valid_keys, None, False) for i, rel in enumerate(rels)
        ]
    refs.tables[name] = valid_keys
    keep = keep_spills and cfg.datasets[name].partition_by is not None  # the rows may stay in the spills
    stats = finish_dataset(cfg, name, out_dir, outcomes, keep)
    if not keep:
        shutil.rmtree(part_dir, ignore_errors=True)
    return stats


def finish_dataset(
    cfg: PipelineConfig, name: str, out_dir: Path, outcomes: list[FileOutcome], keep_spills: bool = False
) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """Join the files' parts into `validated/<name>.csv` and `rejected/<name>.csv`, in file order, and
    total their counts: (dataset stats, counts per file). `keep_spills`: see `_join_groups`."""
    ds = cfg.datasets[name]
    for kind in ("validated", "rejected"):
        (out_dir / kind).mkdir(parents=True, exist_ok=True)
    if ds.partition_by is None:
        _concatenate(out_dir / "validated" / f"{name}.csv", validated_header(cfg, name), [o.valid_path for o in outcomes])
    else:
        _join_groups(out_dir / "validated" / f"{name}.csv", validated_header(cfg, name), outcomes, copy=not keep_spills)
    source_headers = [col.header(col_name) for col_name, col in ds.columns.items()]
    _concatenate(out_dir / "rejected" / f"{name}.csv", [*REJECT_META, *source_headers, "_other"], [o.rejected_path for o in outcomes])
    totals = {"rows_in": 0, "rows_valid": 0, "rows_rejected": 0}
    per_file: dict[str, dict[str, int]] = {}
    reasons: Counter[str] = Counter()
    for outcome in outcomes:
        reasons.update(outcome.reasons)
        file_counts = per_file.setdefault(outcome.rel, dict.fromkeys(totals, 0))  # a file's pieces add up
        for k in totals:
            totals[k] += outcome.counts[k]
            file_counts[k] += outcome.counts[k]
    return {**totals, "reasons": dict(sorted(reasons.items()))}, per_file


@dataclass
class FileOutcome:
    rel: str
    number: int
    counts: dict[str, int]
    reasons: Counter[str]
    valid_path: Path
    rejected_path: Path
    seen: dict[str, KeyTable | KeySpan] | None = None  # a worker's own uniqueness tables, merged by the parent
    valid: KeyTable | KeySpan | None = None  # a worker's valid keys -> lookup values (merged by the parent)
    piece: Piece | None = None  # a range of the file's rows (worker processes), None for the whole file
    # a partitioned dataset's valid part holds its rows grouped by partition value, in value order:
    # value -> (byte offset, byte length, rows) in the part file
    groups: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    # when set, each value's rows are the whole of its own spill file, not a span of the part file
    # (outcomes that stay on this machine: the spills are not copied into the part first)
    spills: dict[str, list[tuple[Path, int, int]]] | None = None
    quoted: bool = False  # some valid line holds a quote character


def _validate_file(
    cfg: PipelineConfig,
    name: str,
    raw_dir: Path,
    number: int,
    rel: str,
    part_dir: Path,
    refs: BatchRefs,
    seen: dict[str, KeyTable],
    valid_keys: KeyTable | None,
    piece: Piece | None = None,
    join_spills: bool = True,
) -> FileOutcome:
    """Stream one raw file (or one piece of it) a chunk at a time: valid rows to a part file,
    rejected rows to another.

    `valid_keys` None (in a worker process): the file's valid keys come back in the outcome instead.
    `join_spills` False: a partitioned dataset's rows stay in their per-value spill files
    (`FileOutcome.spills`), for an outcome that does not leave this machine."""
    referenced = is_referenced(cfg, name)
    keep_valid = valid_keys is None and referenced
    if keep_valid:
        valid_keys = KeyTable()
    ds = cfg.datasets[name]
    source_headers = [col.header(col_name) for col_name, col in ds.columns.items()]
    declared = set(source_headers)
    counts = {"rows_in": 0, "rows_valid": 0, "rows_rejected": 0}
    outcome = FileOutcome(
        rel,
        number,
        counts,
        Counter(),
        part_dir / f"{number:05d}.valid.csv",
        part_dir / f"{number:05d}.rejected.csv",
        piece=piece,
        valid=valid_keys if keep_valid else None,
    )
    path = raw_dir / rel
    # a piece is plain (`cut` checked its whole file); a plain file's blocks tell their own encoding
    clean, plain_from = (None, piece.start) if piece is not None else _survey(path)

    spill = _GroupSpill(outcome.valid_path, ds.fields().index(ds.partition_by)) if ds.partition_by else None
    with open(outcome.rejected_path, "w", encoding="utf-8", errors="surrogateescape", newline="") as rej_fh:
        rejected = csv.writer(rej_fh)

        def reject(line: int, row: Sequence[str], other_pos: list[tuple[int, str]], src_pos: list[int], why: list[str]) -> None:
            counts["rows_rejected"] += 1
            outcome.reasons.update(why)
            other = {h: row[i] for i, h in other_pos if i < len(row)}  # the undeclared columns it has
            rejected.writerow(
                [
                    rel,
                    line,
                    ";".join(why),
                    *(row[i] if 0 <= i < len(row) else "" for i in src_pos),
                    json.dumps(other, ensure_ascii=False) if other else "",
                ]
            )

        def stream(valid: Any) -> None:
            valid.writerow(validated_header(cfg, name))
            rows = iter(petl.fromcsv(str(path), encoding="utf-8-sig", errors="surrogateescape"))
            header = next(rows, None)
            if header is None:
                return  # an empty file: no header, no rows
            line = 1 if piece is None else piece.first_line - 1
            chunks: Iterator[tuple[Sequence[Sequence[str]], bool]]  # (rows, all UTF-8?)
            if plain_from is not None:  # no quote anywhere: every line is a row of comma-separated fields
                chunks = _plain_blocks(path, plain_from, piece.end if piece is not None else None, len(header))
            else:
                chunks = ((chunk, bool(clean)) for chunk in iter(lambda: list(islice(rows, CHUNK_ROWS)), []))
            rules = FileRules(cfg, name, header, refs, seen)
            src_pos = _positions(header, source_headers)  # where the declared columns sit in this file
            other_pos = [(i, h) for i, h in enumerate(header) if h.strip() not in declared]
            for chunk, chunk_clean in chunks:
                lines: Sequence[int] = range(line + 1, line + 1 + len(chunk))
                line += len(chunk)
                undecodable: list[tuple[int, Sequence[str], list[str]]] = []
                # blank lines (empty rows) are not rows (a FlatRows block has none); undecodable rows are rejected
                if not chunk_clean or (not isinstance(chunk, FlatRows) and not all(chunk)):
                    pairs = [(r, ln) for r, ln in zip(chunk, lines, strict=True) if r]
                    if not chunk_clean:
                        bad_bytes = [_has_bad_bytes(r) for r, _ in pairs]
                        undecodable = [(ln, r, ["row.encoding"]) for (r, ln), bad in zip(pairs, bad_bytes, strict=True) if bad]
                        counts["rows_in"] += len(undecodable)
                        pairs = [pair for pair, bad in zip(pairs, bad_bytes, strict=True) if not bad]
                    chunk = [r for r, _ in pairs]
                    lines = [ln for _, ln in pairs]
                counts["rows_in"] += len(chunk)
                cols, rejected_rows, texts = rules.apply_chunk(chunk)
                decided = [(lines[i], chunk[i], why) for i, why in rejected_rows]
                for ln, r, why in sorted([*undecodable, *decided], key=itemgetter(0)) if undecodable else decided:
                    reject(ln, r, other_pos, src_pos, why)  # in line order, whatever the reason
                if not cols or not cols[0]:
                    continue
                counts["rows_valid"] += len(cols[0])
                if referenced and valid_keys is not None:  # else nothing points at it: no need to keep
                    valid_keys.put_codes(cols[rules.key_pos], rules.lookup_codes(valid_keys, cols))
                if spill is None:
                    write_columns(valid_fh, rules.format_columns(cols, texts), rules.plain)
                else:
                    spill.add(rules.format_columns(cols, texts), rules.plain)

        with open(outcome.valid_path, "w", encoding="utf-8", newline="") as valid_fh:
            stream(csv.writer(valid_fh))
    if spill is not None:
        outcome.groups = spill.finish(join_spills)
        outcome.spills = None if join_spills else spill.spills
        outcome.quoted = spill.quoted
    return outcome


class _GroupSpill:
    """A file's valid rows grouped by partition value (the date), so the transform finds each date's
    rows together and writes them out without regrouping them row by row.

    Lines wait in memory per value up to `FLUSH_LINES` in all; a flush appends each value's lines to
    the file's one spill file as a segment (offset, bytes). `finish` copies each value's segments to
    the part file in value order, or leaves them where they are (`spills`). Memory stays bounded
    whatever the number of dates, and so does the number of files: a spill file per date and piece
    made a batch spanning a year create thousands of files, seconds of file-system time."""

    # ~4-8 MB of lines a flush: a batch spanning a year still gets a few hundred lines a date and flush
    # (small segments are small reads for the transform: 16k lines cost a year-long batch ~7%)
    FLUSH_LINES = 65_536

    def __init__(self, part: Path, pos: int) -> None:
        self.part, self.pos = part, pos
        self.buffers: dict[str, list[str]] = {}
        self.spill = part.with_name(part.name + ".spill")
        self.fh: BinaryIO | None = None
        self.size = 0
        self.segments: dict[str, list[tuple[int, int]]] = {}  # value -> its (offset, bytes) in the spill
        self.rows: Counter[str] = Counter()
        self.buffered = 0
        self.quoted = False  # some line holds a quote (a field csv.writer quoted): its lines are not all rows

    @property
    def spills(self) -> dict[str, list[tuple[Path, int, int]]]:
        """value -> where its lines are: (file, offset, bytes) segments in row order."""
        return {value: [(self.spill, start, length) for start, length in segs] for value, segs in self.segments.items()}

    def add(self, cols: list[list[str]], plain: Sequence[bool]) -> None:
        if not cols or not cols[0]:
            return
        lines = rows_as_lines(cols, plain)
        values = cols[self.pos]
        if values.count(values[0]) == len(values):
            self.buffers.setdefault(values[0], []).extend(lines)
        else:
            buffers = self.buffers
            for value, line in zip(values, lines, strict=True):
                bucket = buffers.get(value)
                if bucket is None:
                    buffers[value] = [line]
                else:
                    bucket.append(line)
        self.buffered += len(lines)
        if self.buffered >= self.FLUSH_LINES:
            self._flush()

    def _flush(self) -> None:
        if self.buffers and self.fh is None:  # (a file validated again reuses the name: starts empty)
            self.fh = open(self.spill, "wb")  # noqa: SIM115 - closed in finish()
        for value, lines in self.buffers.items():
            self.rows[value] += len(lines)
            data = (TERMINATOR.join(lines) + TERMINATOR).encode("utf-8")
            self.quoted = self.quoted or b'"' in data
            self.segments.setdefault(value, []).append((self.size, len(data)))
            self.fh.write(data)  # type: ignore[union-attr]
            self.size += len(data)
        self.buffers.clear()
        self.buffered = 0

    def finish(self, join: bool = True) -> dict[str, tuple[int, int, int]]:
        """value -> (offset, bytes, rows): of the value's rows in the part file, to which the
        segments are copied in value order (`join`), else (0, bytes, rows), the rows left in the
        spill file (`spills`)."""
        self._flush()
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        if not join:
            return {value: (0, sum(length for _, length in self.segments[value]), self.rows[value]) for value in sorted(self.segments)}
        groups: dict[str, tuple[int, int, int]] = {}
        if not self.segments:
            return groups
        with open(self.part, "ab") as out:
            for value in sorted(self.segments):
                start = out.tell()
                for data in read_bytes(self.spills[value]):
                    out.write(data)
                groups[value] = (start, out.tell() - start, self.rows[value])
        self.spill.unlink()
        return groups


def _jobs(raw_dir: Path, rels: list[str], workers: int) -> list[tuple[int, str, Piece | None]]:
    """(number, file, piece) in file order: a big file is cut into `workers` pieces when it can be
    (see pieces.py), so three files on two processes keep both busy to the end."""
    jobs: list[tuple[int, str, Piece | None]] = []
    for rel in rels:
        known, pieces = prefetch.cut(raw_dir / rel, workers)  # cut while the command was starting (preflight.py)
        for piece in (pieces if known else cut(raw_dir / rel, workers)) or [None]:
            jobs.append((len(jobs), rel, piece))
    return jobs


def _plain_rows(path: Path, start: int, end: int | None) -> Iterator[Sequence[str]]:
    """The rows of bytes [start, end) of a plain file (see `_survey`), exactly as csv.reader reads
    them (lists of fields; a blank line is the empty tuple, as petl gives it), about twice as fast: with no
    quote, no NUL and no bare CR, a line is a record and its commas are its field separators."""
    return chain.from_iterable(rows for rows, _clean in _plain_blocks(path, start, end))


def _plain_blocks(
    path: Path, start: int, end: int | None, width: int | None = None
) -> Iterator[tuple[Sequence[Sequence[str]], bool]]:
    """The rows of `_plain_rows` a block at a time, each with whether its bytes were all UTF-8 (only
    a block that was not has its rows checked for undecodable bytes); with `width`, a block whose
    lines all hold `width` fields (the usual case) comes as `FlatRows`, split in one pass."""
    with open(path, "rb") as fh:
        fh.seek(start)
        left = (end - start) if end is not None else -1
        carry = b""
        while left:
            data = fh.read(PLAIN_BLOCK if left < 0 else min(left, PLAIN_BLOCK))
            if left > 0:
                left -= len(data)
            if not data:
                left = 0
            data = carry + data
            if left:
                cut = data.rfind(b"\n") + 1  # whole lines only ("\n" is never inside a UTF-8 character)
                if not cut:
                    carry = data
                    continue
                carry, data = data[cut:], data[:cut]
            else:
                carry = b""
            try:
                text, clean = data.decode("utf-8"), True  # whole lines: a cut never splits a character
            except UnicodeDecodeError:
                text, clean = data.decode("utf-8", "surrogateescape"), False
            # a line feed count serves both the line ends' kind and split_fields (no carriage return:
            # one memchr, the usual export ends lines with a line feed). A plain file has no bare
            # carriage return: each one starts a "\r\n", so they are counted (and dropped) as one character
            newlines = text.count("\n")
            crlf = text.count("\r") if "\r" in text else 0
            terminator = "\r\n" if crlf and crlf == newlines else "\n"
            if crlf and terminator == "\n":
                text = text.replace("\r", "")  # mixed line ends: one kind
            if width is not None and width > 1 and text:  # one field: a blank line would pass for an empty field
                # every line feed now ends a line: split_fields need not count them again
                ended = text.endswith(terminator)
                fields = split_fields(text if ended else text + terminator, width, terminator, newlines + (not ended))
                if fields is not None:
                    yield FlatRows(fields, width), clean
                    continue
            lines = text.split(terminator)
            if lines and lines[-1] == "":
                lines.pop()  # the terminator of the last line, not a blank line
            rows: list[Sequence[str]] = list(map(methodcaller("split", ","), lines))
            if "" in lines:
                rows = [row if row != [""] else () for row in rows]  # a blank line is the empty row
            yield rows, clean


PLAIN_BLOCK = 1 << 17  # ~1400 rows of an export: one chunk decided together (64-256 KiB measured alike)


def is_referenced(cfg: PipelineConfig, name: str) -> bool:
    return any(c.references == name for ds in cfg.datasets.values() for c in ds.columns.values())


def validate_files_alone(
    cfg: PipelineConfig,
    name: str,
    raw_dir: Path,
    jobs: Sequence[tuple[int, str] | tuple[int, str, Piece | None]],
    part_dir: Path,
    refs: BatchRefs,
    join_spills: bool = True,
) -> list[FileOutcome]:
    """Each file (or piece of one) on its own, as a worker process or a fanned-out task does: its own
    uniqueness tables, its valid keys kept in the outcome. `merge_outcomes` then makes the result
    exactly the sequential one. A fanned-out task's outcomes travel, so their spills are joined into
    the part file; a local worker's may stay (`join_spills` False)."""
    outcomes = []
    for number, rel, *piece in jobs:
        seen: dict[str, KeyTable] = {}
        outcome = _validate_file(
            cfg, name, raw_dir, number, rel, part_dir, refs, seen, None, piece[0] if piece else None, join_spills
        )
        outcome.seen = seen
        outcomes.append(outcome)
    return outcomes


def merge_outcomes(
    cfg: PipelineConfig,
    name: str,
    raw_dir_of: Callable[[str], Path],
    part_dir: Path,
    refs: BatchRefs,
    outcomes: Iterable[FileOutcome],
    valid_keys: KeyTable,
    again: Callable[[FileOutcome, dict[str, list[Hashable]]], Future[FileOutcome]] | None = None,
) -> list[FileOutcome]:
    """Files validated alone, merged in file order. Uniqueness is the one rule that crosses files: a
    file holding a key an earlier file held is validated again, so the result is exactly the
    sequential one.

    Validated again how: with `again` (worker processes), in a worker, its uniqueness tables
    starting with the keys it shares with the files before it (which keys those are does not
    depend on how any file was validated: a key counts from its first row that has one, valid or
    not), while the next outcomes are merged; a batch whose files repeat keys here and there then
    keeps its parallelism. Without, here, in order, against everything seen before it
    (`raw_dir_of(rel)` gives a directory holding it).

    A list of outcomes may come in any order; an iterator must yield them in file order (the local
    worker pool does), so each is merged and its key tables freed as it arrives."""
    merged: list[FileOutcome] = []
    seen: dict[str, KeyTable | KeyBits] = {}
    redone: list[tuple[int, Future[FileOutcome]]] = []  # (place in merged, the outcome validated again)
    ordered = sorted(outcomes, key=lambda o: o.number) if isinstance(outcomes, list) else outcomes
    for outcome in ordered:
        if merged and outcome.number <= merged[-1].number:
            raise ValueError(f"outcome {outcome.number} arrived after {merged[-1].number}: not in file order")
        local = outcome.seen or {}
        if again is None and any(seen[col].overlaps(table) for col, table in local.items() if col in seen):
            # the file is checked key by key against what came before: tables again, not bits
            tables = {col: t.table() if isinstance(t, KeyBits) else t for col, t in seen.items()}
            outcome = _validate_file(
                cfg, name, raw_dir_of(outcome.rel), outcome.number, outcome.rel, part_dir, refs, tables, valid_keys, outcome.piece, False
            )
            seen.update(tables)  # and the columns it saw first
        else:
            shared: dict[str, list[Hashable]] = {}
            if again is not None:  # the keys this file shares with the files before it, per column
                for col, table in local.items():
                    if isinstance(bits := seen.get(col), KeyBits) and (keys := bits.common(table)):
                        shared[col] = keys
            for col, table in local.items():
                seen.setdefault(col, KeyBits()).absorb(table, True)  # a bit a key: only merged and compared
            if again is not None and shared:
                redone.append((len(merged), again(outcome, shared)))
            elif outcome.valid is not None:
                valid_keys.absorb(outcome.valid)
        outcome.seen, outcome.valid = None, None
        merged.append(outcome)
    for place, future in redone:  # each one's valid keys are none of the others' (its shared ones are out)
        outcome = future.result()
        if outcome.valid is not None:
            valid_keys.absorb(outcome.valid)
        outcome.seen, outcome.valid = None, None
        merged[place] = outcome
    return merged


_WORKER: dict[str, Any] = {}


def _validate_in_worker(job: tuple[int, str, Piece | None]) -> FileOutcome:
    ctx = _WORKER
    [outcome] = validate_files_alone(ctx["cfg"], ctx["name"], ctx["raw_dir"], [job], ctx["part_dir"], ctx["refs"], False)
    # only the slots the piece's keys use travel back to the parent
    outcome.seen = {col: table.span() for col, table in (outcome.seen or {}).items()}
    outcome.valid = outcome.valid.span() if outcome.valid is not None else None
    return outcome


def _validate_again_in_worker(job: tuple[int, str, Piece | None], shared: dict[str, list[Hashable]]) -> FileOutcome:
    """A file (or piece) validated again, its uniqueness tables starting with the keys earlier files
    held (`merge_outcomes`); its own keys were merged already: only its valid ones travel back."""
    ctx = _WORKER
    number, rel, piece = job
    seen: dict[str, KeyTable] = {}
    for col, keys in shared.items():
        seen[col] = KeyTable()
        seen[col].put_many(keys, [True] * len(keys))
    outcome = _validate_file(ctx["cfg"], ctx["name"], ctx["raw_dir"], number, rel, ctx["part_dir"], ctx["refs"], seen, None, piece, False)
    outcome.valid = outcome.valid.span() if outcome.valid is not None else None
    return outcome


def _validate_files_in_processes(
    cfg: PipelineConfig,
    name: str,
    raw_dir: Path,
    jobs: list[tuple[int, str, Piece | None]],
    part_dir: Path,
    refs: BatchRefs,
    workers: int,
    valid_keys: KeyTable,
) -> list[FileOutcome]:
    """Files and pieces in parallel (forked workers see the referenced datasets' key tables), merged
    in job order as they finish (`merge_outcomes`); a file validated again goes to the same workers."""
    _WORKER.update(cfg=cfg, name=name, raw_dir=raw_dir, part_dir=part_dir, refs=refs)
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=multiprocessing.get_context("fork")) as pool:

            def again(outcome: FileOutcome, shared: dict[str, list[Hashable]]) -> Future[FileOutcome]:
                return pool.submit(_validate_again_in_worker, (outcome.number, outcome.rel, outcome.piece), shared)

            arriving = pool.map(_validate_in_worker, jobs)
            return merge_outcomes(cfg, name, lambda _rel: raw_dir, part_dir, refs, arriving, valid_keys, again)
    finally:
        _WORKER.clear()


def _join_groups(dest: Path, header: list[str], outcomes: list[FileOutcome], copy: bool = True) -> None:
    """A partitioned dataset's validated file: its rows grouped by partition value (in value order),
    each value's rows in file order; beside it, `groups_path(dest)` says where each value's rows are.

    `copy` False (the outcomes' spill files stay where they are until the transform on this machine
    is done): the rows are not copied (a serial pass over the batch in the parent); each group
    lists its segments in the spills instead (`csvio.span_segments`) and the file holds the header.
    Only lines without a quote are left in the spills."""
    values = sorted({value for o in outcomes for value in o.groups})
    with open(dest, "w", encoding="utf-8", newline="") as out:
        csv.writer(out).writerow(header)
    groups: list[list[Any]] = []
    # a quoted line may span lines: such a file is read whole by csv.reader, so it is joined
    if not copy and not any(o.quoted for o in outcomes):
        offset = dest.stat().st_size
        # a few spill files hold every segment: each one's relative path is worked out once (a
        # batch spanning years has tens of thousands of segments)
        rel: dict[Path, str] = {}
        for value in values:
            segments = [
                [rel.get(path) or rel.setdefault(path, os.path.relpath(path, dest.parent)), start, length]
                for o in outcomes
                if value in o.groups
                for path, start, length in _segments(o, value)
            ]
            length = sum(segment[2] for segment in segments)
            rows = sum(o.groups[value][2] for o in outcomes if value in o.groups)
            groups.append([value, offset, length, rows, segments])
            offset += length
        groups_path(dest).write_text(json.dumps({"groups": groups}, separators=(",", ":")), encoding="utf-8")
        return
    with open(dest, "ab") as out:
        for value in values:
            start, rows = out.tell(), 0
            for outcome in outcomes:
                span = outcome.groups.get(value)
                if span is None:
                    continue
                rows += span[2]
                for block in read_bytes(_segments(outcome, value)):
                    out.write(block)
            groups.append([value, start, out.tell() - start, rows])
    groups_path(dest).write_text(json.dumps({"groups": groups}, separators=(",", ":")), encoding="utf-8")



def _segments(outcome: FileOutcome, value: str) -> list[tuple[Path, int, int]]:
    """Where an outcome's rows of one value are: in its spill file (segments), or a span of its part."""
    if outcome.spills is not None:
        return outcome.spills[value]
    start, length, _rows = outcome.groups[value]
    return [(outcome.valid_path, start, length)]


def _concatenate(dest: Path, header: list[str], parts: list[Path]) -> None:
    """Join part files under one header (each part starts with its own header line)."""
    with open(dest, "w", encoding="utf-8", errors="surrogateescape", newline="") as out:
        csv.writer(out).writerow(header)
        for part in parts:
            with open(part, encoding="utf-8", errors="surrogateescape", newline="") as src:
                if part.name.endswith(".valid.csv"):
                    src.readline()  # petl wrote the part's own header; the joined file has one
                shutil.copyfileobj(src, out, 1 << 20)


def _positions(header: Sequence[str], names: list[str]) -> list[int]:
    stripped = [h.strip() for h in header]
    return [stripped.index(n) if n in stripped else -1 for n in names]


def _survey(path: Path) -> tuple[bool | None, int | None]:
    """(UTF-8 throughout?, where the rows start if the file is plain, else None).

    A plain file (no quote, NUL or bare CR) is read by `_plain_blocks`, whose blocks tell their own
    encoding: its bytes are only scanned for those characters here (None: not decoded). Any other
    file is read through petl; it is decoded once up front, so the per-row byte check is only paid
    when some byte is not UTF-8."""
    plain, last, header_end, offset = True, b"", -1, 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            if not plain_block(last, chunk):
                plain = False
                break
            if header_end < 0 and b"\n" in chunk:
                header_end = offset + chunk.index(b"\n") + 1
            offset += len(chunk)
            last = chunk[-1:]
    if plain and header_end > 0 and last != b"\r":
        return None, header_end
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False, None
    return True, None


def _has_bad_bytes(row: tuple[str, ...]) -> bool:
    return any(any("\udc80" <= ch <= "\udcff" for ch in value) for value in row)
