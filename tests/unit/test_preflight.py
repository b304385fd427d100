"""The start-up prefetch (kpipe/preflight.py): a child process hashes and cuts a batch's files while
the command imports its libraries. It may only make `kpipe process` faster, never different: its
answers equal the engine's own, and a file that changed, a guess that was wrong or a child that is
gone leave the engine to compute them itself."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest import MonkeyPatch

from kpipe import preflight
from kpipe.engine import pieces, prefetch
from kpipe.engine.digests import files_sha256


@pytest.fixture(autouse=True)
def no_prefetch(monkeypatch: MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(prefetch, "_current", None)
    yield
    if prefetch._current is not None:
        prefetch._current.stop()


def _batch(root: Path) -> Path:
    (root / "orders").mkdir(parents=True)
    (root / "products.csv").write_text("id,category,retail_price\n1,Books,10\n", encoding="utf-8")
    rows = "".join(f"{i},7,Complete,2025-03-01T10:00:00\n" for i in range(1, 4000))
    (root / "orders" / "a.csv").write_text("order_id,user_id,status,created_at\n" + rows, encoding="utf-8")
    return root


def test_prefetched_hashes_and_cuts_equal_the_engines_own(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(pieces, "MIN_PIECE_BYTES", 1024)
    batch = _batch(tmp_path / "batch")
    preflight.start([batch], 3)
    for path in [batch / "products.csv", batch / "orders" / "a.csv"]:
        assert prefetch.sha256(path) == hashlib.sha256(path.read_bytes()).digest()
        assert prefetch.cut(path, 3) == (True, pieces.cut(path, 3))
    assert prefetch.cut(batch / "orders" / "a.csv", 3)[1] is not None  # a real cut, not only "none"
    assert prefetch.cut(batch / "orders" / "a.csv", 2) == (False, None)  # asked for another number of pieces


def test_threads_asking_at_once_get_every_answer(tmp_path: Path) -> None:
    """The batch id hashes files in threads, each asking the prefetch: one reader of the pipe at a
    time (two at once split its lines: a batch of 81 files failed with a JSON error)."""
    batch = _batch(tmp_path / "batch")
    for i in range(80):
        (batch / "orders" / f"part-{i:02d}.csv").write_text(f"order_id\n{i}\n", encoding="utf-8")
    paths = sorted(p for p in batch.rglob("*.csv"))
    preflight.start([batch], 2)
    asked: list[Path] = []
    real = prefetch.Prefetch.find

    def find(self: prefetch.Prefetch, path: Path) -> dict[str, object] | None:
        asked.append(path)
        return real(self, path)

    with MonkeyPatch.context() as patch:
        patch.setattr(prefetch.Prefetch, "find", find)
        digests = files_sha256(paths, threads=8)
    assert digests == [hashlib.sha256(path.read_bytes()).digest() for path in paths]
    assert sorted(asked) == paths and all(prefetch.sha256(path) is not None for path in paths)


def test_a_line_cut_short_ends_the_answers(tmp_path: Path) -> None:
    """A child that died writing a line leaves the engine to compute everything itself."""
    batch = _batch(tmp_path / "batch")
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b'{"path": "/x", "size": 1, "mtime_ns": 2, "sha256": "00", "pieces": 2, "cut": null}\n{"path": "/y", "si')
    os.close(write_fd)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    prefetch.install(prefetch.Prefetch(pid, os.fdopen(read_fd)))
    assert prefetch.sha256(batch / "products.csv") is None and prefetch._current is not None and prefetch._current.done


def test_a_file_changed_since_is_not_answered(tmp_path: Path) -> None:
    batch = _batch(tmp_path / "batch")
    preflight.start([batch], 2)
    assert prefetch.sha256(batch / "products.csv") is not None
    with open(batch / "products.csv", "a", encoding="utf-8") as fh:
        fh.write("2,Toys,5\n")
    assert prefetch.sha256(batch / "products.csv") is None
    assert prefetch.sha256(tmp_path / "elsewhere.csv") is None  # never seen


def test_without_a_child_nothing_is_answered(tmp_path: Path) -> None:
    batch = _batch(tmp_path / "batch")
    assert prefetch.sha256(batch / "products.csv") is None
    assert prefetch.cut(batch / "products.csv", 2) == (False, None)


def test_the_child_is_stopped_and_reaped(tmp_path: Path) -> None:
    preflight.start([_batch(tmp_path / "batch")], 2)
    child = prefetch._current
    assert child is not None
    child.stop()
    assert child.done
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)


@pytest.mark.parametrize(
    ("argv", "dirs", "workers"),
    [
        (["process", "{b}", "--out", "{o}"], ["{b}"], None),
        (["process", "{b}", "{b2}", "--workers", "3", "--json"], ["{b}", "{b2}"], 3),
        (["process", "--out={o}", "--workers=1", "{b}", "--config", "{o}"], ["{b}"], 1),
        (["run", "{b}", "--out", "{o}"], [], None),
        (["process", "no-such-dir", "--out", "{o}"], [], None),
    ],
)
def test_arguments_are_read_without_click(
    tmp_path: Path, monkeypatch: MonkeyPatch, argv: list[str], dirs: list[str], workers: int | None
) -> None:
    """The existing directories among `process`'s arguments (not the values of --out or --config)
    and --workers (default: the command's)."""
    names = {"b": tmp_path / "b", "b2": tmp_path / "b2", "o": tmp_path / "o"}
    for path in names.values():
        path.mkdir()
    started: list[tuple[list[Path], int]] = []
    monkeypatch.setattr(preflight, "start", lambda d, n: started.append((d, n)))
    preflight.start_from_argv([a.format(**{k: str(v) for k, v in names.items()}) for a in argv])
    expected = [Path(d.format(**{k: str(v) for k, v in names.items()})) for d in dirs]
    if argv[0] != "process":
        assert started == []
    else:
        assert started == [(expected, workers or min(os.cpu_count() or 1, 4))]
