"""Whole-row byte ranges of one CSV file, so one big file can be validated by several processes.

A CSV file can only be cut at a line break that ends a record. When the file holds no quote
character every line break does, and when it holds no bare carriage return the csv module's notion
of a line is the same as a count of "\\n", so each piece knows the line number of its first row.
Files that are not like that (quoted fields, bare CR line ends, NUL bytes, which the csv module
refuses) are never cut: they are validated whole, exactly as before. A cut never splits a UTF-8
character (a "\\n" byte is never inside one), so each piece checks its own bytes' encoding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

BLOCK = 1 << 20
MIN_PIECE_BYTES = 4 << 20  # below this a piece's start-up costs more than the parallelism gains


@dataclass(frozen=True)
class Piece:
    start: int  # byte offset of the piece's first line
    end: int  # byte offset just past its last line
    first_line: int  # line number of its first line (the header is line 1)


def cut(path: Path, pieces: int, min_bytes: int | None = None, block: int = BLOCK) -> list[Piece] | None:
    """Up to `pieces` ranges of whole lines after the header, or None when the file must stay whole."""
    size = os.path.getsize(path)
    pieces = min(pieces, size // max(MIN_PIECE_BYTES if min_bytes is None else min_bytes, 1))
    if pieces < 2:
        return None
    targets = [size * k // pieces for k in range(1, pieces)]
    starts: list[int] = []
    counts: list[int] = []  # "\n" before each cut
    newlines, offset, header_end = 0, 0, -1
    last = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            if not plain_block(last, chunk):
                return None
            if header_end < 0 and b"\n" in chunk:
                header_end = offset + chunk.index(b"\n") + 1
            while targets and targets[0] < offset + len(chunk):
                at = chunk.find(b"\n", max(targets[0] - offset, 0))
                if at < 0:
                    break  # the line goes on in the next chunk: cut there
                starts.append(offset + at + 1)
                counts.append(newlines + chunk.count(b"\n", 0, at + 1))
                targets.pop(0)
            if targets:  # line numbers are only needed up to the last cut (counting is most of a scan)
                newlines += chunk.count(b"\n")
            offset += len(chunk)
            last = chunk[-1:]
    if last == b"\r" or header_end < 0:
        return None
    bounds = [header_end, *(s for s in starts if s > header_end and s < size), size]
    line_counts = [1, *(c for s, c in zip(starts, counts, strict=True) if s > header_end and s < size)]
    out = []
    for (start, end), before in zip(pairwise(bounds), line_counts, strict=True):
        if end <= start:
            continue
        out.append(Piece(start, end, before + 1))
    return out if len(out) > 1 else None


def plain_block(previous_last: bytes, block: bytes) -> bool:
    """Can this block of a file be read line by line, split on commas, exactly as the csv module
    reads it? No quote, no NUL (which the csv module refuses) and no bare carriage return."""
    return b'"' not in block and b"\x00" not in block and not bare_cr(previous_last, block)


def bare_cr(previous_last: bytes, block: bytes) -> bool:
    """A carriage return not followed by a line feed (a CR ending a block pairs with the next block's
    first byte)."""
    if previous_last == b"\r" and block[:1] != b"\n":
        return True
    if b"\r" not in block:
        return False
    return block.count(b"\r") - block.endswith(b"\r") != block.count(b"\r\n")

