"""Writing rows that arrive as text columns, byte for byte as `csv.writer` would.

`csv.writer.writerows` checks every field for characters that need quoting, about 150 ns a field.
Columns the engine formatted itself (numbers, dates, datetimes, booleans) can never need quotes, and a
string column needs them only if it holds a delimiter, a quote or a line break, which one scan of the
joined column tells. A chunk with no such field is written as `",".join` lines; any other chunk goes
through `csv.writer`, so the bytes are the same either way (QUOTE_MINIMAL, "\\r\\n" line ends).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

QUOTE_TRIGGERS = (",", '"', "\r", "\n")
TERMINATOR = "\r\n"


def needs_quoting(col: Sequence[str]) -> bool:
    joined = "".join(col)
    return any(map(joined.__contains__, QUOTE_TRIGGERS))


def write_columns(fh: TextIO, writer: Any, cols: Sequence[Sequence[str]], plain: Sequence[bool]) -> None:
    """Write the rows of `cols` (equal-length text columns) to `fh`; `writer` is a `csv.writer` on `fh`.

    `plain[i]` says column i cannot hold a character that needs quoting (the engine formatted it)."""
    if not cols or not cols[0]:
        return
    if len(cols) == 1 or any(needs_quoting(col) for col, safe in zip(cols, plain, strict=True) if not safe):
        writer.writerows(zip(*cols, strict=True))  # a lone empty field is written as "" by csv
        return
    fh.write(TERMINATOR.join(map(",".join, zip(*cols, strict=True))))
    fh.write(TERMINATOR)
