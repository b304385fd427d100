"""Parallel validation and recompute (`workers > 1`) decide exactly what the sequential path does,
including uniqueness across files, which is the one rule that crosses file boundaries."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pytest import MonkeyPatch

from chalicelib.config import default_config_path, load_config
from kpipe.engine import pieces, validate
from kpipe.generate import generate_batches
from kpipe.process import process_batches

ORDERS = "order_id,user_id,status,created_at\n"
ITEMS = "id,order_id,user_id,product_id,status,sale_price\n"


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def _outputs(out: Path) -> dict[str, bytes]:
    """Every output file's bytes (rejected files keep the original, possibly non-UTF-8, bytes)."""
    names = ["OrderKPI.json", "CategoryKPI.json"]
    files = [out / n for n in names] + sorted((out / "rejected").rglob("*.csv")) + sorted((out / "processed").rglob("*"))
    return {str(p.relative_to(out)): p.read_bytes() for p in files if p.is_file()}


def test_cross_file_duplicates_are_rejected_like_the_sequential_path(tmp_path: Path) -> None:
    batch = _write(
        tmp_path / "batch",
        {
            "products.csv": "id,category,retail_price\n1,Books,10\n",
            "orders/a.csv": ORDERS + "1,7,Complete,2025-03-01T10:00:00\n2,7,Complete,2025-03-01T11:00:00\n",
            # order 2 again (a later duplicate in a later file: rejected), order 3 new
            "orders/b.csv": ORDERS + "2,8,Returned,2025-03-02T10:00:00\n3,8,Complete,2025-03-02T10:00:00\n",
            "order_items/a.csv": ITEMS + "10,1,7,1,,5.00\n11,2,7,1,,6.00\n",
            "order_items/b.csv": ITEMS + "11,3,8,1,,7.00\n12,3,8,1,,8.00\n",
        },
    )
    cfg = load_config(default_config_path())
    sequential = process_batches(cfg, [batch], tmp_path / "w1", workers=1)
    parallel = process_batches(cfg, [batch], tmp_path / "w2", workers=2)
    for report in (sequential, parallel):
        orders = report["batches"][0]["datasets"]["orders"]
        items = report["batches"][0]["datasets"]["order_items"]
        assert (orders["rows_valid"], orders["reasons"]) == (3, {"order_id.unique": 1})
        assert (items["rows_valid"], items["reasons"]) == (3, {"id.unique": 1})
    assert _outputs(tmp_path / "w1") == _outputs(tmp_path / "w2")


def test_files_repeating_keys_here_and_there_are_validated_again_in_the_workers(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    """Keys repeated across files and pieces (valid otherwise, rejected for something else too, again
    within the later file, in three files): each file holding one is validated again in a worker,
    starting from the keys it shares with the files before it; the parent validates none of them
    and the outputs are the sequential path's, byte for byte."""
    orders = {
        "a": [f"{i},7,Complete,2025-03-0{1 + i % 3}T10:00:00" for i in range(1, 41)],
        # 5: valid otherwise; 6: also a bad user id; 7 twice more in this file; 8 in every file
        "b": ["5,9,Complete,2025-03-02T10:00:00", *[f"{i},8,Shipped,2025-03-02T10:00:00" for i in range(41, 61)], "6,x,Complete,2025-03-02T10:00:00", "7,1,Complete,2025-03-01T10:00:00", "7,2,Complete,2025-03-01T10:00:00", "8,3,Complete,2025-03-03T10:00:00"],
        "c": [*[f"{i},8,Returned,2025-03-03T10:00:00" for i in range(61, 81)], "8,4,Complete,2025-03-03T10:00:00", "45,5,Complete,2025-03-03T10:00:00"],
        "d": [f"{i},8,Complete,2025-03-01T10:00:00" for i in range(81, 101)],  # none repeated: merged as it came
    }
    files = {"products.csv": "id,category,retail_price\n1,Books,10\n2,Toys,4\n"}
    files.update({f"orders/{name}.csv": ORDERS + "\n".join(rows) + "\n" for name, rows in orders.items()})
    items = [f"{i},{i % 100 + 1},7,{1 + i % 2},,5.00" for i in range(1, 201)]
    files["order_items/a.csv"] = ITEMS + "\n".join(items[:120]) + "\n"
    files["order_items/b.csv"] = ITEMS + "\n".join([*items[120:], items[3], items[50]]) + "\n"
    batch = _write(tmp_path / "batch", files)
    monkeypatch.setattr(pieces, "MIN_PIECE_BYTES", 256)  # the bigger files in pieces too
    assert pieces.cut(batch / "orders" / "b.csv", 2) is not None
    cfg = load_config(default_config_path())
    sequential = process_batches(cfg, [batch], tmp_path / "w1", workers=1)
    log = tmp_path / "validated.log"
    real = validate._validate_file

    def spy(*args: Any, **kwargs: Any) -> Any:  # inherited by the forked workers
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid() == parent} {args[1]} {args[3]}\n")
        return real(*args, **kwargs)

    parent = os.getpid()
    monkeypatch.setattr(validate, "_validate_file", spy)
    parallel = process_batches(cfg, [batch], tmp_path / "w2", workers=2)
    calls = Counter(log.read_text(encoding="utf-8").splitlines())
    assert [call for call in calls if call.startswith("True")] == ["True products 0"]  # the others in workers
    # validated again: the pieces holding a repeated key (b's two, c's second; the items' second half of b)
    assert {call for call, n in calls.items() if n > 1} == {"False orders 2", "False orders 3", "False orders 5", "False order_items 3"}
    assert sequential["batches"][0]["datasets"] == parallel["batches"][0]["datasets"]
    assert sequential["batches"][0]["datasets"]["orders"]["reasons"] == {"order_id.unique": 7, "user_id.type": 1}
    assert sequential["batches"][0]["datasets"]["order_items"]["reasons"] == {"id.unique": 2}
    assert _outputs(tmp_path / "w1") == _outputs(tmp_path / "w2")


def test_generated_batches_identical_with_two_workers(tmp_path: Path) -> None:
    batches = generate_batches(tmp_path / "gen", 400, batches=2, invalid_fraction=0.05, seed=5)
    cfg = load_config(default_config_path())
    one = process_batches(cfg, batches, tmp_path / "w1", workers=1)
    two = process_batches(cfg, batches, tmp_path / "w2", workers=2)
    assert [b["datasets"] for b in one["batches"]] == [b["datasets"] for b in two["batches"]]
    outputs = _outputs(tmp_path / "w1")
    assert outputs == _outputs(tmp_path / "w2")
    assert any(name.startswith("processed/orders/order_date=") for name in outputs)


@pytest.mark.parametrize("flush_lines", [16_384, 5])
def test_files_cut_into_pieces_decide_exactly_as_whole_files(tmp_path: Path, monkeypatch: MonkeyPatch, flush_lines: int) -> None:
    """Pieces of one file validated by different processes: same rows valid, same rejected rows with
    the same file and line numbers, same uniqueness decisions (a duplicate across pieces included: the
    piece is validated again in the parent, over the spill file its worker left); with a date's rows
    in one segment of a spill or in many."""
    monkeypatch.setattr(validate._GroupSpill, "FLUSH_LINES", flush_lines)
    batches = generate_batches(tmp_path / "gen", 300, batches=1, invalid_fraction=0.08, seed=11)
    # the last item of the first orders file again at its end: a key repeated in a later piece
    orders = sorted((batches[0] / "orders").glob("*.csv"))[0]
    lines = orders.read_text(encoding="utf-8").splitlines(keepends=True)
    # and a row with bytes that are not UTF-8 in the second half: each piece checks its own bytes
    undecodable = b"99999,7,Compl\xe9t\xff,2025-03-01T10:00:00\n"
    rows = [line.encode() for line in [*lines, lines[len(lines) // 3]]]
    orders.write_bytes(b"".join([*rows[: len(rows) * 3 // 4], undecodable, *rows[len(rows) * 3 // 4 :]]))
    monkeypatch.setattr(pieces, "MIN_PIECE_BYTES", 512)
    assert pieces.cut(orders, 2) is not None
    cfg = load_config(default_config_path())
    one = process_batches(cfg, batches, tmp_path / "w1", workers=1)
    two = process_batches(cfg, batches, tmp_path / "w2", workers=2)
    reasons = one["batches"][0]["datasets"]["orders"]["reasons"]
    assert reasons.get("order_id.unique", 0) >= 1 and reasons.get("row.encoding", 0) >= 1
    for a, b in zip(one["batches"], two["batches"], strict=True):
        assert (a["datasets"], a["files"]) == (b["datasets"], b["files"])
    assert _outputs(tmp_path / "w1") == _outputs(tmp_path / "w2")


def test_spill_limits_do_not_change_the_outputs(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    """A file's valid rows wait in memory, go to its spill file a segment per date and flush, and are
    joined in date order: flushing every few rows (many segments a date) gives the same bytes."""
    batches = generate_batches(tmp_path / "gen", 300, batches=1, invalid_fraction=0.05, seed=3, days=12)
    cfg = load_config(default_config_path())
    process_batches(cfg, batches, tmp_path / "default")
    monkeypatch.setattr(validate._GroupSpill, "FLUSH_LINES", 7)
    monkeypatch.setattr(validate, "PLAIN_BLOCK", 512)  # a few rows a chunk: many flushes per file
    process_batches(cfg, batches, tmp_path / "tiny")
    outputs = _outputs(tmp_path / "default")
    assert len([n for n in outputs if n.startswith("processed/orders/order_date=")]) == 12
    assert outputs == _outputs(tmp_path / "tiny")
