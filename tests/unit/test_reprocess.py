"""The same batch processed again under another batch id (its files uploaded again: S3 gives them new
versions, hence a new id) changes no KPI, even after a later batch corrected some of its rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import default_config_path, load_config
from kpipe.engine.store import LocalStore
from kpipe.engine.transform import transform_batch
from kpipe.engine.validate import validate_batch
from kpipe.generate import generate_batches


@pytest.mark.parametrize("workers", [1, 2])
def test_same_rows_under_a_new_batch_id_change_nothing(tmp_path: Path, workers: int) -> None:
    """Found out by their content digest (computed beside the indexing), the rows take their old place:
    the work done under the new id's place is dropped and done again, nothing counted twice."""
    cfg = load_config(default_config_path())
    a, b = generate_batches(tmp_path / "in", 200, batches=2, invalid_fraction=0.03, seed=13)
    store = LocalStore(tmp_path / "store")
    tables: dict[str, dict[str, Any]] = {}

    def run(batch: Path, batch_id: str) -> int:
        work = tmp_path / batch_id
        validate_batch(cfg, batch, work, batch_id, workers=workers)
        result = transform_batch(cfg, batch_id, work / "validated", store, work / "transform", workers=workers)
        for name, by_date in result.tables.items():
            tables.setdefault(name, {}).update(by_date)
        return result.seq

    seq_a = run(a, "b-first-upload")
    run(b, "b-corrections")
    after_b = {name: dict(by_date) for name, by_date in tables.items()}
    files_after_b = sorted(p.relative_to(store.root) for p in store.root.rglob("*.csv"))

    assert run(a, "b-same-files-uploaded-again") == seq_a  # takes its old place in the arrival order
    assert tables == after_b
    assert sorted(p.relative_to(store.root) for p in store.root.rglob("*.csv")) == files_after_b
    assert any(items for items in after_b["OrderKPI"].values())


def test_validated_files_without_their_groups_sidecar_give_the_same_store(tmp_path: Path) -> None:
    """A batch validated by an older release (no `<dataset>.groups.json`), or whose sidecar was lost,
    is indexed row by row instead: the processed store and the KPIs come out the same."""
    cfg = load_config(default_config_path())
    batches = generate_batches(tmp_path / "in", 200, batches=2, invalid_fraction=0.03, seed=17)
    outputs = []
    for variant, drop_sidecar in (("with", False), ("without", True)):
        store, tables = LocalStore(tmp_path / variant / "store"), []
        for i, batch in enumerate(batches):
            work = tmp_path / variant / f"b{i}"
            validate_batch(cfg, batch, work, f"b-{i}")
            sidecars = sorted((work / "validated").glob("*.groups.json"))
            assert [p.name for p in sidecars] == ["order_items.groups.json", "orders.groups.json"]
            if drop_sidecar:
                for path in sidecars:
                    path.unlink()
            tables.append(transform_batch(cfg, f"b-{i}", work / "validated", store, work / "transform").tables)
        files = {p.relative_to(store.root): p.read_bytes() for p in store.root.rglob("*.csv")}
        outputs.append((tables, files))
    assert outputs[0] == outputs[1]


def test_partitioned_rows_counts_the_same_with_or_without_sidecars(tmp_path: Path) -> None:
    """What sizes the transform task (fan out or not) before anything is indexed."""
    from kpipe.engine.transform import partitioned_rows

    cfg = load_config(default_config_path())
    [batch] = generate_batches(tmp_path / "in", 120, batches=1, invalid_fraction=0.05, seed=3)
    report = validate_batch(cfg, batch, tmp_path / "work", "b-1")
    expected = sum(report["datasets"][name]["rows_valid"] for name in ("orders", "order_items"))
    validated = tmp_path / "work" / "validated"
    assert partitioned_rows(cfg, validated) == expected
    for sidecar in validated.glob("*.groups.json"):
        sidecar.unlink()
    assert partitioned_rows(cfg, validated) == expected


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("quoted", [False, True])
def test_rows_left_in_their_spills_give_the_same_store(tmp_path: Path, workers: int, quoted: bool) -> None:
    """`keep_spills` (`kpipe process`): a validated file holds its header and its groups point into
    the validators' spill files, not copied; the processed store, the KPIs and the batch's content
    digest are those of the joined files. A line with a quote (a category holding a comma) may not be
    a row by itself: that dataset is joined as before."""
    cfg = load_config(default_config_path())
    batches = generate_batches(tmp_path / "in", 300, batches=2, invalid_fraction=0.03, seed=21)
    if quoted:
        products = batches[0] / "products.csv"
        with open(products, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        category = rows[0].index("category")
        for row in rows[1:]:
            row[category] += ", and more"
        with open(products, "w", encoding="utf-8", newline="") as fh:
            csv.writer(fh).writerows(rows)
    outputs = []
    for keep in (False, True):
        store, tables = LocalStore(tmp_path / f"keep-{keep}" / "store"), []
        for i, batch in enumerate(batches):
            work = tmp_path / f"keep-{keep}" / f"b{i}"
            validate_batch(cfg, batch, work, f"b-{i}", workers=workers, keep_spills=keep)
            groups = json.loads((work / "validated" / "order_items.groups.json").read_text())["groups"]
            assert all(len(span) == (5 if keep and not (quoted and i == 0) else 4) for span in groups)
            tables.append(transform_batch(cfg, f"b-{i}", work / "validated", store, work / "transform", workers).tables)
        files = {p.relative_to(store.root): p.read_bytes() for p in store.root.rglob("*.csv")}
        state = json.loads((store.root / "_meta" / "state.json").read_text())
        outputs.append((tables, files, sorted(state["contents"])))
    assert outputs[0] == outputs[1]
    assert any(b'"' in data for data in outputs[1][1].values()) == quoted
