"""write_columns: the joined-lines fast path writes exactly the bytes csv.writer writes."""

from __future__ import annotations

import csv
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from kpipe.engine.csvio import write_columns

FIELD = st.text(alphabet=st.sampled_from(list('ab ,"\r\n\'0-.é')), max_size=6)


def _both(cols: list[list[str]], plain: list[bool]) -> tuple[str, str]:
    fast, slow = io.StringIO(newline=""), io.StringIO(newline="")
    write_columns(fast, csv.writer(fast), cols, plain)
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
