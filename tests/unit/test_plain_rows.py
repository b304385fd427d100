"""The plain-file reader gives exactly the rows csv.reader (petl's fromcsv) gives, whenever _survey
says a file is plain, and _survey refuses every file where the two could differ."""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory
from unittest.mock import patch

import petl
from hypothesis import given, settings
from hypothesis import strategies as st

from kpipe.engine import validate
from kpipe.engine.csvio import FlatRows
from kpipe.engine.validate import _plain_blocks, _plain_rows, _survey

LINE = st.lists(st.sampled_from(["a", "b", ",", " ", "é", "\t", "1", "\x00", '"', "\r"]), max_size=8).map("".join)
BAD = st.sampled_from([b"", b"\xff", b"\xe9t"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(LINE, st.sampled_from(["\n", "\r\n"]), BAD), max_size=25),
    st.booleans(),
    st.booleans(),
    st.integers(1, 64),
    st.sampled_from([["id"], ["id", "name"]]),
)
def test_plain_rows_equal_csv_reader(
    lines: list[tuple[str, str, bytes]], bom: bool, final_newline: bool, block: int, header: list[str]
) -> None:
    body = b"".join(text.encode() + bad + end.encode() for text, end, bad in lines)
    if not final_newline and body.endswith(b"\n"):
        body = body[:-2] if body.endswith(b"\r\n") else body[:-1]
    data = (b"\xef\xbb\xbf" if bom else b"") + ",".join(header).encode() + b"\r\n" + body
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.csv"
        path.write_bytes(data)
        clean, start = _survey(path)
        plain = b'"' not in data and b"\x00" not in data and not any(
            data[i : i + 1] == b"\r" and data[i + 1 : i + 2] != b"\n" for i in range(len(data))
        )
        assert (start is not None) == plain
        try:
            data.decode("utf-8")
            decodes = True
        except UnicodeDecodeError:
            decodes = False
        if start is None:
            assert clean == decodes  # read through petl: decoded up front
            return
        assert clean is None  # plain: each block tells its own encoding
        expected = list(petl.data(petl.fromcsv(str(path), encoding="utf-8-sig", errors="surrogateescape")))
        with patch.object(validate, "PLAIN_BLOCK", block):
            got = list(_plain_rows(path, start, None))
            # the validator's way: blocks, split flat when they can be, each saying whether it decoded
            blocks = list(_plain_blocks(path, start, None, len(header)))
    assert [tuple(r) for r in got] == [tuple(r) for r in expected]
    assert [tuple(r) for block, _ in blocks for r in block] == [tuple(r) for r in expected]
    assert all(len(r) == len(header) for block, _ in blocks if isinstance(block, FlatRows) for r in block)
    rows_decode = all(not any("\udc80" <= ch <= "\udcff" for ch in "".join(r)) for r in expected)
    assert all(ok for _, ok in blocks) == rows_decode  # a block is clean exactly when its rows hold no undecodable byte
    assert all(r == () for r in got if not r)  # blank lines are the empty tuple the validator skips
