"""The same batch processed again under another batch id (its files uploaded again: S3 gives them new
versions, hence a new id) changes no KPI, even after a later batch corrected some of its rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from chalicelib.config import default_config_path, load_config
from kpipe.engine.store import LocalStore
from kpipe.engine.transform import partitioned_rows, transform_batch
from kpipe.engine.validate import validate_batch
from kpipe.generate import generate_batches


def store_rows(root: Path) -> dict[str, list[str]]:
    """Every file's rows (in no particular order: a partition is a set of rows)."""
    return {str(p.relative_to(root)): sorted(map(repr, pq.read_table(p).to_pylist())) for p in sorted(root.rglob("*.parquet"))}


def test_same_rows_under_a_new_batch_id_change_nothing(tmp_path: Path) -> None:
    """Found out by their content digest, the rows take their old sequence number: they lose to every
    later row of their keys, so the store and the KPIs stay as they were."""
    cfg = load_config(default_config_path())
    a, b = generate_batches(tmp_path / "in", 200, batches=2, invalid_fraction=0.03, seed=13)
    store = LocalStore(tmp_path / "store")
    tables: dict[str, dict[str, Any]] = {}

    def run(batch: Path, batch_id: str) -> tuple[int, int | None]:
        work = tmp_path / batch_id
        validate_batch(cfg, batch, work, batch_id)
        result = transform_batch(cfg, batch_id, work / "validated", store, work / "transform")
        for name, by_date in result.tables.items():
            tables.setdefault(name, {}).update(by_date)
        return result.seq, result.replay_of

    seq_a, _ = run(a, "b-first-upload")
    run(b, "b-corrections")
    after_b = {name: dict(by_date) for name, by_date in tables.items()}
    rows_after_b = store_rows(store.root)

    assert run(a, "b-same-files-uploaded-again") == (seq_a, seq_a)  # takes its old place in the arrival order
    assert tables == after_b
    assert store_rows(store.root) == rows_after_b
    assert any(items for items in after_b["OrderKPI"].values())


def test_the_store_holds_each_key_once(tmp_path: Path) -> None:
    """Hive-partitioned Parquet an outside engine can count: after overlapping batches, each order and
    item is in exactly one partition, in its newest version."""
    import duckdb

    cfg = load_config(default_config_path())
    batches = generate_batches(tmp_path / "in", 300, batches=3, invalid_fraction=0.03, seed=5, days=4)
    store = LocalStore(tmp_path / "store")
    valid_orders: set[int] = set()
    for n, batch in enumerate(batches):
        work = tmp_path / f"w{n}"
        validate_batch(cfg, batch, work, f"b-{n}")
        valid_orders |= {r["order_id"] for r in pq.read_table(work / "validated" / "orders.parquet").to_pylist()}
        transform_batch(cfg, f"b-{n}", work / "validated", store, work / "transform")
    con = duckdb.connect()
    glob = str(store.root / "orders" / "*" / "*.parquet")
    total, distinct = con.execute(f"SELECT count(*), count(DISTINCT order_id) FROM read_parquet('{glob}', hive_partitioning = true)").fetchone()
    assert total == distinct == len(valid_orders)
    items = str(store.root / "order_items" / "*" / "*.parquet")
    mismatched = con.execute(
        f"SELECT count(*) FROM read_parquet('{items}', hive_partitioning = true) i"
        f" JOIN read_parquet('{glob}', hive_partitioning = true) o USING (order_id) WHERE i.order_date <> o.order_date"
    ).fetchone()[0]
    assert mismatched == 0  # items sit with their order's date


def test_partitioned_rows_counts_the_valid_rows(tmp_path: Path) -> None:
    """What sizes the transform task (fan out or not) before anything is merged."""
    cfg = load_config(default_config_path())
    [batch] = generate_batches(tmp_path / "in", 120, batches=1, invalid_fraction=0.05, seed=3)
    report = validate_batch(cfg, batch, tmp_path / "work", "b-1")
    expected = sum(report["datasets"][name]["rows_valid"] for name in ("orders", "order_items"))
    assert partitioned_rows(cfg, tmp_path / "work" / "validated") == expected
