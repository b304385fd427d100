"""Validation outcomes written down for a merge elsewhere (kpipe/engine/outcomes.py): lossless, and a
merge of files validated alone and passed through files equals the sequential validation."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from chalicelib.config import default_config_path, load_config
from kpipe.engine.keys import KeyTable
from kpipe.engine.outcomes import decode, encode, load_keys, load_outcome, save_keys, save_outcome
from kpipe.engine.rules import BatchRefs
from kpipe.engine.validate import dataset_files, finish_dataset, merge_outcomes, validate_batch, validate_files_alone

ORDERS = "order_id,user_id,status,created_at\n"
ITEMS = "id,order_id,user_id,product_id,status,sale_price\n"


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, 7, -3, "x", "", Decimal("1.50"), Decimal("-0.00"), date(2025, 3, 1),
     datetime(2025, 3, 1, 10, 0, tzinfo=UTC), datetime(2025, 3, 1, 10, 0), (date(2025, 3, 1), "Books"), ()],
)
def test_values_come_back_as_the_same_type_and_value(value: object) -> None:
    back = decode(encode(value))
    assert back == value and type(back) is type(value)


def test_unknown_types_and_tags_are_refused() -> None:
    with pytest.raises(TypeError):
        encode(1.5)
    with pytest.raises(ValueError, match="unknown value tag"):
        decode({"z": "1"})


def test_key_tables_round_trip(tmp_path: Path) -> None:
    table = KeyTable()
    table.put_many([1, 2, "k-9"], [(date(2025, 3, 1),), (date(2025, 3, 2),), (date(2025, 3, 1),)])
    save_keys(table, tmp_path / "keys.json")
    assert sorted(load_keys(tmp_path / "keys.json").items(), key=str) == sorted(table.items(), key=str)


def test_files_validated_alone_and_merged_through_files_equal_the_sequential_path(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for rel, text in {
        "products.csv": "id,category,retail_price\n1,Books,10\n",
        "orders/a.csv": ORDERS + "1,7,Complete,2025-03-01T10:00:00\n2,7,Complete,2025-03-01T11:00:00\n",
        "orders/b.csv": ORDERS + "2,8,Returned,2025-03-02T10:00:00\n3,8,Complete,2025-03-02T10:00:00\n",
        "order_items/a.csv": ITEMS + "10,1,7,1,,5.00\n11,2,7,1,,6.00\n",
        "order_items/b.csv": ITEMS + "11,3,8,1,,7.00\n12,3,8,1,,8.00\n",
    }.items():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_text(text, encoding="utf-8")
    cfg = load_config(default_config_path())
    sequential = validate_batch(cfg, raw, tmp_path / "sequential", "b-1")

    files = dataset_files(cfg, raw)
    refs = BatchRefs(cfg)
    stats = {}
    for name in cfg.dataset_order():
        alone_dir, merge_dir = tmp_path / "alone" / name, tmp_path / "merge" / name
        alone_dir.mkdir(parents=True)
        merge_dir.mkdir(parents=True)
        for outcome in validate_files_alone(cfg, name, raw, list(enumerate(files[name])), alone_dir, refs):
            save_outcome(outcome, merge_dir / f"{outcome.number}.json")
            for part in (outcome.valid_path, outcome.rejected_path):
                (merge_dir / part.name).write_bytes(part.read_bytes())
        outcomes = [load_outcome(p, merge_dir) for p in sorted(merge_dir.glob("*.json"), reverse=True)]  # any order
        valid_keys = KeyTable()
        merged = merge_outcomes(cfg, name, lambda _rel: raw, merge_dir, refs, outcomes, valid_keys)
        save_keys(valid_keys, tmp_path / f"{name}.keys.json")
        refs.tables[name] = load_keys(tmp_path / f"{name}.keys.json")
        stats[name], _ = finish_dataset(cfg, name, tmp_path / "merged", merged)

    assert stats == sequential["datasets"]
    assert stats["orders"]["reasons"] == {"order_id.unique": 1}
    for kind in ("validated", "rejected"):
        for name in cfg.datasets:
            assert (tmp_path / "merged" / kind / f"{name}.csv").read_bytes() == (tmp_path / "sequential" / kind / f"{name}.csv").read_bytes()
