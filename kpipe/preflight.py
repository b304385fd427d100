"""Work on a batch's raw files that needs nothing but the bytes, done by a child process while the
`kpipe process` interpreter is still importing its libraries.

Start-up (click, pydantic, petl, rich: about 0.2 s) leaves a core idle, and the first things
`kpipe process` does are serial scans of the raw files: each file's SHA-256 for the batch id (100 MB
for the benchmark's 1.3M rows) and, with worker processes, each big file's cut into pieces
(`pieces.cut`). The console entry point (`main`) forks a child for them before anything heavy is
imported; the child sends one JSON line per file and exits. The engine then asks `sha256` and
`cut`, which answer only for a file whose size and modification time are still what the child
saw, and only for the same number of pieces: anything else (a file changed, an argument guessed
wrong, the child not started) is computed as before. So the prefetch can make things faster,
never different.

The arguments are read with a small scan of `sys.argv` (click has not been imported yet): the
existing directories among the `process` arguments, and `--workers`. A wrong guess only wastes the
idle core.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kpipe.engine import prefetch

_VALUED = {"--out", "--config", "--workers"}  # the options of `kpipe process` that take a value


def start(dirs: list[Path], pieces: int) -> None:
    """Fork the child that hashes (and, for `pieces` > 1, cuts) every file under `dirs`; the engine
    reads its answers through `kpipe.engine.prefetch`."""
    if not dirs or not hasattr(os, "fork"):
        return
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no thread, nothing heavy imported; leaves with os._exit, whatever happens
        code = 0
        try:
            os.close(read_fd)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # not holding the caller's pipes open
                os.dup2(devnull, fd)
            with os.fdopen(write_fd, "w") as out:
                for record in _records(dirs, pieces):
                    out.write(json.dumps(record) + "\n")
                    out.flush()
        except BaseException:  # a broken pipe (the parent is gone), a vanished file: the parent computes it
            code = 1
        os._exit(code)
    os.close(write_fd)
    prefetch.install(prefetch.Prefetch(pid, os.fdopen(read_fd)))


def _records(dirs: list[Path], pieces: int) -> Iterator[dict[str, Any]]:
    from kpipe.engine.digests import file_sha256
    from kpipe.engine.pieces import cut

    for root in dirs:
        for path in sorted(p for p in Path(root).resolve().rglob("*") if p.is_file()):
            stat = path.stat()
            digest = file_sha256(path).hex()  # no prefetch in this process: hashed here
            cuts = cut(path, pieces) if pieces > 1 else None
            yield {
                "path": str(path),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": digest,
                "pieces": pieces,
                "cut": None if cuts is None else [[p.start, p.end, p.first_line] for p in cuts],
            }


def start_from_argv(argv: list[str]) -> None:
    """`kpipe process DIR... [--workers N]`: start the child for those directories."""
    if not argv or argv[0] != "process":
        return
    dirs: list[Path] = []
    workers = min(os.cpu_count() or 1, 4)  # the command's default
    args = iter(argv[1:])
    for arg in args:
        name, has_value, value = arg.partition("=")
        if name in _VALUED:
            value = value if has_value else next(args, "")
            if name == "--workers" and value.isdigit():
                workers = int(value)
        elif not arg.startswith("-") and os.path.isdir(arg):
            dirs.append(Path(arg))
    start(dirs, workers)


def main() -> None:
    """The `kpipe` console entry point: the prefetch first, then the command line."""
    start_from_argv(sys.argv[1:])
    from kpipe.cli import main as cli

    cli()
