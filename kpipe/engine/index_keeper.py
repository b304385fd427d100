"""The processed store's indexes while a batch's dates are written: where their updates are applied.

Date workers send back, per date, the keys the index is to point at (`Puts`). With one process they
are applied where they arrive. With workers, a keeper process applies them instead and saves the
indexes: a 5M-row batch's indexes are ~5 MB of slots (and their updates ~0.7 s of CPU at random
places in them), which the parent would otherwise hold on top of everything it holds already; its
peak resident set was then the run's (`bench/run.py --scale`). The keeper is forked from the parent
before the date workers are, so it starts from the same indexes (and the codes of this batch's dates)
and shares their pages until it writes them.
"""

from __future__ import annotations

import multiprocessing
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

from kpipe.engine.keys import KeyTable

# one date's index updates of one dataset: (code of (seq, date), keys, none of them in the index yet?,
# (smallest, largest) of int keys or None)
Put = tuple[int, Any, bool, tuple[int, int] | None]


def _apply_all(indexes: dict[str, KeyTable], puts: dict[str, list[Put]]) -> None:
    for name, updates in puts.items():
        apply_puts(indexes[name], updates)


def _save_all(indexes: dict[str, KeyTable], paths: dict[str, Path]) -> None:
    for name, path in paths.items():
        indexes[name].save(path)


def apply_puts(index: KeyTable, puts: list[Put]) -> None:
    """Apply the index updates a date worker recorded, one date's keys at a time."""
    for code, keys, new, bounds in puts:
        if new:  # none of them in the index yet, and keys are unique in a batch
            index.put_new_codes(keys, code, bounds)
        else:
            index.put_codes(keys, [code] * len(keys))


class IndexKeeper:
    """Applies index updates (`apply`) and saves the indexes (`save`), in this process or, with
    `separate`, in a keeper process (see the module's docstring). The codes the updates use must be
    in the indexes before (a keeper has its own copy from then on). Use as a context manager: a
    keeper still running when the block ends (an error) is stopped."""

    def __init__(self, indexes: dict[str, KeyTable], separate: bool) -> None:
        self._indexes = indexes
        self._conn: Connection | None = None
        self._process: Any = None
        if separate:
            context = multiprocessing.get_context("fork")
            self._conn, theirs = context.Pipe()
            self._process = context.Process(target=_keep, args=(theirs, indexes), name="kpipe-index-keeper", daemon=True)
            self._process.start()
            theirs.close()

    def apply(self, puts: dict[str, list[Put]]) -> None:
        if self._conn is None:
            _apply_all(self._indexes, puts)
            return
        try:
            self._conn.send(("apply", puts))
        except (BrokenPipeError, ConnectionResetError):
            self._failed()

    def save(self, paths: dict[str, Path]) -> None:
        """Each index to its path; the keeper, if any, is done then."""
        if self._conn is None:
            _save_all(self._indexes, paths)
            return
        try:
            self._conn.send(("save", paths))
            status, detail = self._conn.recv()
        except (BrokenPipeError, ConnectionResetError, EOFError):
            self._failed()
        if status != "saved":
            raise RuntimeError(f"the index keeper failed:\n{detail}")
        self._process.join()
        self._conn.close()
        self._conn = None

    def _failed(self) -> None:
        """The keeper is gone: its own account of why, when it could give one."""
        assert self._conn is not None
        detail = ""
        try:
            if self._conn.poll(5):
                detail = str(self._conn.recv()[1])
        except (EOFError, OSError):
            pass
        self._process.join(5)
        raise RuntimeError(f"the index keeper stopped (exit code {self._process.exitcode}):\n{detail}".rstrip())

    def __enter__(self) -> IndexKeeper:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join()
        if self._conn is not None:
            self._conn.close()


def _keep(conn: Connection, indexes: dict[str, KeyTable]) -> None:
    """The keeper process: updates until told to save; any error is sent back as its traceback."""
    try:
        while True:
            kind, payload = conn.recv()
            if kind == "apply":
                _apply_all(indexes, payload)
            else:
                _save_all(indexes, payload)
                conn.send(("saved", None))
                return
    except BaseException:  # reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
