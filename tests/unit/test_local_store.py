"""Publishing a transform's scratch into a local store: whole new folders are renamed in, folders the
store already has take their files one by one; either way the store ends up with exactly the files."""

from __future__ import annotations

from pathlib import Path

from kpipe.engine.store import LocalStore


def _scratch(root: Path, files: dict[str, str]) -> list[str]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return list(files)


def _contents(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


def test_a_store_without_the_dataset_takes_its_folder_whole(tmp_path: Path) -> None:
    names = _scratch(tmp_path / "out", {"orders/d=1/a.csv": "1", "orders/d=2/a.csv": "2", "items/d=1/a.csv": "3"})
    store = LocalStore(tmp_path / "store")
    store.publish_moved(names, tmp_path / "out")
    assert _contents(tmp_path / "store") == {"orders/d=1/a.csv": "1", "orders/d=2/a.csv": "2", "items/d=1/a.csv": "3"}
    assert not (tmp_path / "out" / "orders").exists()


def test_existing_folders_keep_their_other_files_and_get_replacements(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.publish_moved(_scratch(tmp_path / "first", {"orders/d=1/1.csv": "old", "orders/d=1/0.csv": "kept"}), tmp_path / "first")
    names = _scratch(tmp_path / "out", {"orders/d=1/1.csv": "new", "orders/d=2/1.csv": "two", "top.csv": "t"})
    store.publish_moved(names, tmp_path / "out")
    assert _contents(tmp_path / "store") == {
        "orders/d=1/0.csv": "kept",
        "orders/d=1/1.csv": "new",
        "orders/d=2/1.csv": "two",
        "top.csv": "t",
    }


def test_a_folder_holding_more_than_the_names_is_not_taken_whole(tmp_path: Path) -> None:
    names = _scratch(tmp_path / "out", {"orders/d=1/a.csv": "1"})
    (tmp_path / "out" / "orders" / "d=1" / "stray.tmp").write_text("not published")
    store = LocalStore(tmp_path / "store")
    store.publish_moved(names, tmp_path / "out")
    assert _contents(tmp_path / "store") == {"orders/d=1/a.csv": "1"}
