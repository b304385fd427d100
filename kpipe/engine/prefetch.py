"""Answers prefetched by a child process while `kpipe process` was starting (see kpipe/preflight.py):
each raw file's SHA-256 and its cut into pieces. The engine asks here first; without a prefetch
(ECS tasks, tests, library use) every answer is None and it computes as always.

A record is used only while the file's size and modification time are what the child saw, and a
cut only for the same number of pieces, so a prefetch can make the engine faster, never different.
Only the process that started the child reads its pipe (worker processes forked later do not), one
thread at a time (the batch id hashes files in threads)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import IO, Any

from kpipe.engine.pieces import Piece


class Prefetch:
    """The parent's end: results read from the child's pipe as they are needed."""

    def __init__(self, pid: int, reader: IO[str]) -> None:
        self.pid, self.reader, self.owner = pid, reader, os.getpid()
        self.files: dict[str, dict[str, Any]] = {}
        self.done = False
        self.lock = threading.Lock()  # two threads reading the pipe at once would split its lines

    def find(self, path: Path) -> dict[str, Any] | None:
        """The child's record of `path` if it is still the same file, waiting for it if need be."""
        if os.getpid() != self.owner:  # a worker process forked later: the pipe is the parent's
            return None
        key = str(Path(path).resolve())
        with self.lock:
            while key not in self.files and not self.done:
                line = self.reader.readline()
                try:
                    record = json.loads(line)
                except ValueError:  # the end, or a line cut short (the child died writing it)
                    self._finish()
                    break
                self.files[record["path"]] = record
            record = self.files.get(key)
        if record is None:
            return None
        try:
            stat = os.stat(key)
        except OSError:
            return None
        return record if (stat.st_size, stat.st_mtime_ns) == (record["size"], record["mtime_ns"]) else None

    def _finish(self) -> None:
        self.done = True
        self.reader.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def stop(self) -> None:
        """At exit: a child still at work is stopped and reaped (no process outlives the command)."""
        if os.getpid() != self.owner or self.done:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with self.lock:
            if not self.done:
                self._finish()


_current: Prefetch | None = None


def install(prefetch: Prefetch | None) -> None:
    """Use `prefetch` from now on (None: none); its child is stopped at exit if still at work."""
    global _current
    _current = prefetch
    if prefetch is not None:
        atexit.register(prefetch.stop)


def sha256(path: Path) -> bytes | None:
    """The prefetched SHA-256 of `path`, or None."""
    record = _current.find(path) if _current is not None else None
    return bytes.fromhex(record["sha256"]) if record is not None else None


def cut(path: Path, pieces: int) -> tuple[bool, list[Piece] | None]:
    """(True, what `pieces.cut(path, pieces)` gives) when prefetched for that many pieces, else
    (False, None)."""
    record = _current.find(path) if _current is not None else None
    if record is None or record["pieces"] != pieces:
        return False, None
    return True, None if record["cut"] is None else [Piece(*p) for p in record["cut"]]
