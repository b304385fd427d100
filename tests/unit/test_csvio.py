"""write_columns: the joined-lines fast path writes exactly the bytes csv.writer writes."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from tempfile import TemporaryDirectory
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpipe.engine import csvio
from kpipe.engine.csvio import CanonicalCsv, FlatRows, split_columns, split_fields, write_columns

FIELD = st.text(alphabet=st.sampled_from(list('ab ,"\r\n\'0-.é')), max_size=6)


def _both(cols: list[list[str]], plain: list[bool]) -> tuple[str, str]:
    fast, slow = io.StringIO(newline=""), io.StringIO(newline="")
    write_columns(fast, cols, plain)
    csv.writer(slow).writerows(zip(*cols, strict=True))
    return fast.getvalue(), slow.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4).flatmap(lambda width: st.lists(st.lists(FIELD, min_size=width, max_size=width), max_size=5)))
def test_same_bytes_as_csv_writer(rows: list[list[str]]) -> None:
    cols = [list(col) for col in zip(*rows, strict=True)] if rows else []
    fast, slow = _both(cols, [False] * len(cols))
    assert fast == slow


def test_plain_columns_are_not_scanned_but_string_columns_are() -> None:
    cols = [["1", "2"], ["a,b", "c"]]
    fast, slow = _both(cols, [True, False])
    assert fast == slow == '1,"a,b"\r\n2,c\r\n'
    assert _both([["1", "2"], ["x", "y"]], [True, True]) == ("1,x\r\n2,y\r\n", "1,x\r\n2,y\r\n")


def test_a_lone_empty_field_is_quoted_as_csv_does() -> None:
    assert _both([["", "a"]], [True]) == ('""\r\na\r\n', '""\r\na\r\n')


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["2025-03-01", "2025-03-02", "2025-03-03"]), st.text(alphabet="xyzé", max_size=30)), max_size=40),
    st.integers(4, 64),
)
def test_blocks_of_a_grouped_file_give_every_line_once_in_order(rows: list[tuple[str, str]], block: int) -> None:
    """Blocks cut at line ends whatever the block size (a line longer than a block included)."""
    rows = sorted(rows, key=lambda r: r[0])
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.csv"
        spans, body = [], b"k,date\r\n"
        for date in sorted({d for d, _ in rows}):
            lines = "".join(f"{text},{date}\r\n" for d, text in rows if d == date).encode()
            spans.append([date, len(body), len(lines), lines.count(b"\r\n")])
            body += lines
        path.write_bytes(body)
        source = CanonicalCsv(path)
        with patch.object(csvio, "BLOCK_CHARS", block):
            got = list(source.blocks(spans, [0], 2))
    assert "".join(text for _, text, _ in got) == body.decode()[len("k,date\r\n") :]
    assert [(date, key) for date, _, (keys,) in got for key in keys] == [(d, t) for d, t in rows]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["2025-03-01", "2025-03-02"]), st.integers(0, 2), st.text(alphabet="xyzé", max_size=30)), max_size=40),
    st.integers(4, 400),
)
def test_blocks_gather_a_spans_segments_into_whole_lines(rows: list[tuple[str, int, str]], block: int) -> None:
    """A span left in the validators' spill files (a few lines per segment, segments in several
    files) comes out as blocks of whole lines, each line once and in segment order; small segments
    share a block (fewer blocks than segments once a block holds several)."""
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "v.csv"
        path.write_bytes(b"k,date\r\n")  # the rows stayed in the spills
        spills = {n: bytearray() for n in range(3)}
        spans, expected = [], {}
        for date in ("2025-03-01", "2025-03-02"):
            segments = []
            for k, (d, spill, text) in enumerate(rows):
                if d != date:
                    continue
                line = f"{text}{k},{date}\r\n".encode()
                segments.append([f"s{spill}.spill", len(spills[spill]), len(line)])
                spills[spill] += line
                expected.setdefault(date, []).append(line.decode())
            if segments:
                spans.append([date, 0, 0, len(segments), segments])
        for n, data in spills.items():
            (folder / f"s{n}.spill").write_bytes(bytes(data))
        with patch.object(csvio, "BLOCK_CHARS", block):
            got = list(CanonicalCsv(path).blocks(spans, [0], 2))
    for date, lines in expected.items():
        texts = [text for d, text, _ in got if d == date]
        assert "".join(texts) == "".join(lines) and all(text.endswith("\r\n") for text in texts)
        keys = [key for d, _, (col,) in got if d == date for key in col]
        assert keys == [line.split(",")[0] for line in lines]
        if sum(map(len, lines)) < block:
            assert len(texts) == 1  # every segment of the date in one block
    assert [d for d, _, _ in got] == sorted(d for d, _, _ in got)


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 4).flatmap(lambda width: st.lists(st.lists(FIELD, min_size=width, max_size=width), min_size=1, max_size=12)))
def test_select_reads_what_csv_reader_reads_and_write_records_copies_bytes(rows: list[list[str]]) -> None:
    """Quoted or not, an engine-written file reads back as csv.reader reads it, by one or two cut
    columns or by all of them, and its records go back out byte for byte."""
    width = len(rows[0])
    with TemporaryDirectory() as tmp:
        path, copy = Path(tmp) / "f.csv", Path(tmp) / "g.csv"
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([f"h{i}" for i in range(width)])
            write_columns(fh, [list(c) for c in zip(*rows, strict=True)], [False] * width)
        with open(path, encoding="utf-8", newline="") as fh:
            expected = list(csv.reader(fh))[1:]
        source = CanonicalCsv(path)
        for positions in ([0], [0, width - 1], list(range(width))):
            got: list[list[str]] = [[] for _ in positions]
            for _records, cols in source.select(positions, width):
                for acc, col in zip(got, cols, strict=True):
                    acc.extend(col)
            assert got == [[row[p] for row in expected] for p in positions]
        with open(copy, "w", encoding="utf-8", newline="") as out:
            out.write("h\r\n")
            writer = csv.writer(out)
            for records, _ in source.select([0], width):
                source.write_records(out, writer, records)
        assert copy.read_bytes()[len("h\r\n") :] == path.read_bytes()[path.read_bytes().index(b"\r\n") + 2 :]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.text(alphabet=st.sampled_from(list("a,\n\r")), max_size=7), max_size=8),
    st.integers(1, 4),
    st.sampled_from(["\n", "\r\n"]),
)
def test_split_fields_gives_each_line_width_fields_or_refuses(lines: list[str], width: int, terminator: str) -> None:
    """The one-pass split is exactly the line-by-line split whenever it answers, and answers whenever
    every line (split at `terminator`) holds `width` fields and no stray line feed."""
    text = "".join(line + terminator for line in lines)
    fields = split_fields(text, width, terminator)
    by_line = [line.split(",") for line in text.split(terminator)[:-1]]
    aligned = all(len(row) == width for row in by_line) and (terminator == "\n" or text.count("\n") == len(by_line))
    assert (fields is not None) == aligned
    # every line feed (and carriage return, for "\r\n") ends a line: the caller may count
    if terminator == "\n" or text.count("\n") == text.count("\r") == len(by_line):
        assert split_fields(text, width, terminator, text.count("\n")) == fields
    if fields is not None:
        rows = FlatRows(fields, width)
        assert list(rows) == by_line and len(rows) == len(by_line)
        columns = [[row[p] for row in by_line] for p in range(width)]
        assert [rows.column(p) for p in range(width)] == columns
        if terminator == "\r\n":  # the transform's reader of canonical files
            assert split_columns(text, list(range(width)), width) == columns


def test_read_bytes_gives_segments_in_order_and_refuses_a_short_file(tmp_path: Path) -> None:
    """Segments come back byte for byte in the order given, whatever the block size; a segment
    reaching past its file's end is an error, not a silently shorter result."""
    a, b = tmp_path / "a.spill", tmp_path / "b.spill"
    a.write_bytes(b"0123456789")
    b.write_bytes(b"abcdefghij")
    segments = [(b, 2, 5), (a, 0, 3), (b, 0, 1), (a, 7, 3)]
    for block in (1, 2, 4, 64):
        assert b"".join(csvio.read_bytes(segments, block)) == b"cdefg012a789"
    with pytest.raises(EOFError):
        b"".join(csvio.read_bytes([(a, 8, 5)]))
