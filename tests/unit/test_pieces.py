"""cut: byte ranges of whole rows, or None when the file cannot be cut safely."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path
from tempfile import TemporaryDirectory

from hypothesis import given, settings
from hypothesis import strategies as st

from kpipe.engine.pieces import cut

LINE = st.text(alphabet=st.sampled_from(list("ab,1 é\r")), max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(LINE, min_size=1, max_size=60),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
    st.integers(2, 4),
    st.integers(1, 40),
)
def test_pieces_tile_the_rows_after_the_header(lines: list[str], end: str, final_newline: bool, count: int, block: int) -> None:
    data = ("h1,h2" + end + end.join(lines) + (end if final_newline else "")).encode()
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.csv"
        path.write_bytes(data)
        got = cut(path, count, min_bytes=8, block=block)
    if re.search(rb"\r(?!\n)", data):
        assert got is None  # a bare carriage return ends a csv line that "\n" counting would not see
        return
    if got is None:
        return  # too small to cut into two non-empty pieces
    header_end = data.index(b"\n") + 1
    assert got[0].start == header_end and got[-1].end == len(data)
    for a, b in pairwise(got):
        assert a.end == b.start and data[a.end - 1 : a.end] == b"\n"
    for piece in got:
        assert piece.first_line == data.count(b"\n", 0, piece.start) + 1


def test_quotes_and_bare_carriage_returns_keep_a_file_whole(tmp_path: Path) -> None:
    rows = "".join(f"{i},x\n" for i in range(200))
    for text in (b'a,b\n1,"x"\n' + rows.encode(), b"a,b\r1,x\r" + rows.encode()):
        path = tmp_path / "f.csv"
        path.write_bytes(text)
        assert cut(path, 2, min_bytes=8) is None
    path.write_bytes(b"a,b\n" + rows.encode())
    assert cut(path, 2, min_bytes=8) is not None
    assert cut(path, 2) is None  # a small file is not worth cutting
