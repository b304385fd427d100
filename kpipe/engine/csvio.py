"""The CSV files the engine writes (validated and processed rows), written and read fast.

Writing: `csv.writer.writerows` checks every field for characters that need quoting, about 150 ns a
field. Columns the engine formatted itself (numbers, dates, datetimes, booleans) can never need
quotes, and a string column needs them only if it holds a delimiter, a quote or a line break, which
one scan of the joined column tells. A chunk with no such field is written as `",".join` lines; any
other chunk goes through `csv.writer`, so the bytes are the same either way (QUOTE_MINIMAL, "\\r\\n").

Reading (`CanonicalCsv`): a file of this kind with no quote character anywhere has one row per line
and no comma inside a field, so `str.split` parses it exactly; otherwise petl's `fromcsv` does.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from itertools import islice
from operator import itemgetter, methodcaller
from pathlib import Path
from typing import Any, TextIO

import petl

QUOTE_TRIGGERS = (",", '"', "\r", "\n")
TERMINATOR = "\r\n"


def needs_quoting(col: Sequence[str]) -> bool:
    joined = "".join(col)
    return any(map(joined.__contains__, QUOTE_TRIGGERS))


def rows_as_lines(cols: Sequence[Sequence[str]], plain: Sequence[bool]) -> list[str]:
    """Each row of `cols` as its CSV line without the terminator (as `csv.writer` would quote it;
    a lone empty field is written as `""`)."""
    if len(cols) > 1 and not any(needs_quoting(col) for col, safe in zip(cols, plain, strict=True) if not safe):
        return list(map(",".join, zip(*cols, strict=True)))
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    lines = []
    for row in zip(*cols, strict=True):
        writer.writerow(row)
        lines.append(buffer.getvalue()[: -len(TERMINATOR)])
        buffer.seek(0)
        buffer.truncate()
    return lines


def write_columns(fh: TextIO, cols: Sequence[Sequence[str]], plain: Sequence[bool]) -> None:
    """Write the rows of `cols` (equal-length text columns) to `fh`.

    `plain[i]` says column i cannot hold a character that needs quoting (the engine formatted it)."""
    if not cols or not cols[0]:
        return
    fh.write(TERMINATOR.join(rows_as_lines(cols, plain)))
    fh.write(TERMINATOR)


BLOCK_CHARS = 1 << 16  # ~650 rows: a chunk that stays in cache parses twice as fast as ~10k rows
QUOTED_CHUNK_ROWS = 2048


class CanonicalCsv:
    """A CSV file the engine wrote itself (validated or processed): UTF-8, "\\r\\n" line ends,
    QUOTE_MINIMAL.

    Without a single quote character in the file, no field holds a delimiter or a line break, so every
    line is a row and `str.split(",")` parses it exactly, about twice as fast as the csv module. A
    file with a quote is read through petl's `fromcsv` (csv.reader) instead."""

    def __init__(self, path: Path, quoted: bool | None = None) -> None:
        """`quoted`: whether the file holds a quote character, when the caller knows (else it is looked for)."""
        self.path = path
        self.quoted = _contains(path, b'"') if quoted is None else quoted

    def select(self, positions: Sequence[int], width: int) -> Iterator[tuple[list[Any], list[list[str]]]]:
        """(records, the columns at `positions`) a chunk at a time, for files of `width` fields.

        A record is the row's line (or its fields, in a quoted file) and goes back out unchanged
        through `write_records`; an unquoted file's columns are cut by `cut_columns`."""
        if self.quoted:
            data = iter(petl.data(petl.fromcsv(str(self.path), encoding="utf-8")))
            while rows := list(islice(data, QUOTED_CHUNK_ROWS)):
                yield rows, [list(map(itemgetter(p), rows)) for p in positions]
            return
        for lines in self._lines():
            yield lines, cut_columns(lines, positions, width)

    def write_records(self, fh: TextIO, writer: Any, records: Sequence[Any]) -> None:
        """Records from `select`, written to another CSV file (the same bytes csv.writer would write)."""
        if self.quoted:
            writer.writerows(records)
        elif records:
            fh.write(TERMINATOR.join(records))
            fh.write(TERMINATOR)

    def blocks(
        self, spans: Sequence[Sequence[Any]], positions: Sequence[int], width: int, files: OpenFiles | None = None
    ) -> Iterator[tuple[str, str, list[list[str]]]]:
        """For each span of a validated file's groups sidecar (`[value, byte offset, bytes, rows]`,
        maybe with its segments: see `span_segments`), its text a block of whole lines at a time
        with the fields at `positions` of each line: (value, text, columns). `files`: descriptors
        the caller keeps open across calls (else opened and closed here)."""
        if files is None:
            with OpenFiles() as own:
                yield from self.blocks(spans, positions, width, own)
            return
        for span in spans:
            # a span's segments (whole lines each) are gathered into blocks of about BLOCK_CHARS:
            # a batch spanning years has a few dozen small segments a date (one per validation
            # flush and piece), and each block costs a split and a pass of every column step
            held: list[bytes] = []
            size = 0
            for got in read_bytes(span_segments(self.path, span), BLOCK_CHARS, files):
                held.append(got)
                size += len(got)
                if size < BLOCK_CHARS:
                    continue
                data = b"".join(held)
                last = data.rfind(b"\r\n")
                if last < 0:  # one line longer than a block: read on
                    held = [data]
                    continue
                held = [data[last + 2 :]]
                size = len(held[0])
                yield self._block(span[0], data[: last + 2], positions, width)
            if size:
                yield self._block(span[0], b"".join(held), positions, width)

    @staticmethod
    def _block(value: str, data: bytes, positions: Sequence[int], width: int) -> tuple[str, str, list[list[str]]]:
        text = data.decode("utf-8")
        return value, text, split_columns(text, positions, width)

    def _lines(self) -> Iterator[list[str]]:
        with open(self.path, encoding="utf-8", newline="") as fh:
            fh.readline()
            carry = ""
            while block := fh.read(BLOCK_CHARS):
                lines = (carry + block).split(TERMINATOR)
                carry = lines.pop()
                if lines:
                    yield lines
            if carry:
                yield [carry]


def cut_columns(lines: Sequence[str], positions: Sequence[int], width: int) -> list[list[str]]:
    """The fields at `positions` of unquoted lines of `width` fields, as columns. One or two are cut
    out of each line by C-level partial splits (from the nearer end); more take one full split."""
    if len(positions) > 2:
        rows = list(map(methodcaller("split", ","), lines))
        return [list(map(itemgetter(p), rows)) for p in positions]
    return [list(map(get, map(cut, lines))) for cut, get in map(_cutter, positions, [width] * len(positions))]


def split_fields(text: str, width: int, terminator: str = TERMINATOR, lines: int | None = None) -> list[str] | None:
    """Every field of `text` (whole unquoted lines, each ended by `terminator`) in one C-level split,
    with a "\n" marker after each line's `width` fields: row k is `fields[k*(width+1) : k*(width+1)+width]`
    and column p is `fields[p :: width+1]`. None when some line does not hold exactly `width` fields
    (a blank line, a short or long row): the caller then splits line by line.

    Why: one split of the block instead of one per line, and columns cut by slicing, not by one
    itemgetter call per row, take about a third less time for a line of ten fields. The markers prove
    the alignment: exactly n of them at every (width+1)-th place means each line has width fields.

    `lines`: the caller knows every line feed and carriage return in `text` is part of a terminator
    and counted the lines; the two counting passes over the text (a tenth of this function's time)
    are then skipped, and "\r\n" is replaced as two single characters (a two-character pattern is
    replaced three times slower)."""
    if lines is None:
        lines = text.count(terminator)
        if terminator != "\n" and text.count("\n") != lines:
            return None  # a stray line feed inside a line would pass for a marker
        fields = text.replace(terminator, ",\n,").split(",")
    elif terminator == "\r\n":
        fields = text.replace("\r", ",").replace("\n", "\n,").split(",")
    else:
        fields = text.replace(terminator, ",\n,").split(",")
    fields.pop()  # the empty string after the last line's marker
    step = width + 1
    if len(fields) != lines * step or fields[width::step].count("\n") != lines:
        return None
    return fields


class FlatRows(Sequence[list[str]]):
    """A block of rows split by `split_fields`: row i is a slice of the fields, made when asked for (a
    rejected row); the validator reads whole columns (`column`), so most rows never exist as lists."""

    __slots__ = ("fields", "rows", "step", "width")

    def __init__(self, fields: list[str], width: int) -> None:
        self.fields, self.width, self.step = fields, width, width + 1
        self.rows = len(fields) // self.step

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, i: int) -> list[str]:  # type: ignore[override]
        if not -self.rows <= i < self.rows:
            raise IndexError(i)
        start = (i % self.rows) * self.step
        return self.fields[start : start + self.width]

    def __iter__(self) -> Iterator[list[str]]:
        return map(self.__getitem__, range(self.rows))

    def column(self, pos: int) -> list[str]:
        return self.fields[pos :: self.step]


def split_columns(text: str, positions: Sequence[int], width: int) -> list[list[str]]:
    """The fields at `positions` of the lines of `text` (each ended by "\r\n"), as columns: text of a
    CSV file the engine wrote with no quote anywhere, so no field holds a line feed or a carriage
    return (a field with one is quoted) and every line feed ends a line."""
    if len(positions) > 2:
        fields = split_fields(text, width, TERMINATOR, text.count("\n"))
        if fields is not None:
            return [fields[p :: width + 1] for p in positions]
    return cut_columns(text.split(TERMINATOR)[:-1], positions, width)


def groups_path(validated_csv: Path) -> Path:
    """The sidecar of a partitioned dataset's validated file: `[value, byte offset, bytes, rows]` per
    partition value, in file order, so the transform copies each date's rows without regrouping them."""
    return validated_csv.with_name(validated_csv.stem + ".groups.json")


def span_segments(validated_csv: Path, span: Sequence[Any]) -> list[tuple[Path, int, int]]:
    """Where a span's bytes are: `(file, byte offset, bytes)` in order. A span of a validated file
    that stayed on the machine that validated it may have a fifth element, its segments in the
    validators' spill files (`[path relative to the validated file's folder, offset, bytes]`): its
    rows were not copied into the validated file, which then holds the header alone. Read in order,
    the segments are exactly the bytes a joined file would hold at `[offset, offset + bytes)`."""
    if len(span) > 4:
        folder = validated_csv.parent
        return [(_spill_path(folder, rel), start, length) for rel, start, length in span[4]]
    return [(validated_csv, span[1], span[2])]


@lru_cache(maxsize=1024)
def _spill_path(folder: Path, rel: str) -> Path:
    """A spill file's path, joined once: a batch spanning years names each spill in ~90k segments."""
    return folder / rel


def read_bytes(segments: Sequence[tuple[Path, int, int]], block: int = 1 << 20, files: OpenFiles | None = None) -> Iterator[bytes]:
    """The bytes of `span_segments` (or any `(file, offset, bytes)` segments), a block at a time.
    `files`: descriptors the caller keeps open across calls (else opened and closed here)."""
    if files is None:
        with OpenFiles() as own:
            yield from read_bytes(segments, block, own)
        return
    for path, start, length in segments:
        end = start + length
        while start < end:
            data = files.read(path, start, min(end - start, block))
            if not data:
                raise EOFError(f"{path} ends before byte {end}")
            yield data
            start += len(data)


class OpenFiles:
    """Files open while segments are read, each once, read by position (`os.pread`: no shared file
    offset, so reads never depend on an earlier seek, nor on another process holding the same
    descriptor through fork).

    Why: a spill file holds a segment of many dates per flush; a batch spanning years reads a few
    of them for each of ~2,000 dates, and opening every file again for each date was ~20k opens."""

    def __init__(self) -> None:
        self.fds: dict[Path, int] = {}

    def read(self, path: Path, offset: int, size: int) -> bytes:
        fd = self.fds.get(path)
        if fd is None:
            fd = self.fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        if _PREAD is not None:
            return _PREAD(fd, size, offset)
        os.lseek(fd, offset, os.SEEK_SET)  # no pread (Windows): this object is used by one thread
        return os.read(fd, size)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> OpenFiles:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


_PREAD = getattr(os, "pread", None)


def _cutter(pos: int, width: int) -> tuple[Callable[[str], list[str]], Callable[[list[str]], str]]:
    """How to cut field `pos` out of a line with the fewest splits (from whichever end is nearer)."""
    from_end = width - 1 - pos
    if pos <= from_end:
        return methodcaller("split", ",", pos + 1), itemgetter(pos)
    return methodcaller("rsplit", ",", from_end + 1), itemgetter(-(from_end + 1))


def _contains(path: Path, needle: bytes) -> bool:
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK_CHARS):
            if needle in block:
                return True
    return False
