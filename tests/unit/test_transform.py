"""Across batches (docs/semantics.md "Across batches"): later rows replace earlier ones, moved orders take
their items along, categories come from the batch that brought the item, and re-processing changes nothing."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import PipelineConfig, parse_config
from kpipe.engine.store import LocalStore
from kpipe.engine.transform import TransformResult, transform_batch
from kpipe.engine.validate import validate_batch
from kpipe.process import local_batch_id, process_batches
from tests.oracle import oracle


@pytest.fixture(params=["duckdb", "petl"])
def cfg(request: pytest.FixtureRequest, config_text: str) -> PipelineConfig:
    """Every test here runs on both executors: the default config with `engine.executor` set."""
    base = parse_config(config_text)
    return base.model_copy(update={"engine": base.engine.model_copy(update={"executor": request.param})})


D = Decimal
BOOKS = {"id": 1, "category": "Books", "retail_price": "10.00"}
TOYS = {"id": 2, "category": "Toys", "retail_price": "20.00"}
CATALOG = [BOOKS, TOYS]


def order(oid: int, day: str, user: int = 7, status: str = "Complete", time: str = "10:00:00") -> dict[str, Any]:
    return {"order_id": oid, "user_id": user, "status": status, "created_at": f"2025-03-{day}T{time}"}


def item(iid: int, oid: int, pid: int, price: str, qty: int = 1, status: str = "") -> dict[str, Any]:
    return {"id": iid, "order_id": oid, "product_id": pid, "sale_price": price, "quantity": qty, "status": status}


class Engine:
    """Batches through validate_batch + transform_batch on one store (to see TransformResult.tables),
    and through process_batches (to see the KPI tables a user gets)."""

    def __init__(self, tmp: Path, cfg: PipelineConfig, write_batch: Any) -> None:
        self.tmp, self.cfg, self.write_batch = tmp, cfg, write_batch
        self.store = LocalStore(tmp / "store")
        self.n = 0

    def batch(self, products: Any = CATALOG, orders: Any = (), items: Any = ()) -> Path:
        self.n += 1
        return self.write_batch(self.tmp / f"batch{self.n}", products, list(orders), list(items))

    def transform(self, batch: Path) -> TransformResult:
        batch_id = local_batch_id(self.cfg, batch)
        work = self.tmp / "work" / f"{batch_id}-{self.n}-{id(batch)}"
        report = validate_batch(self.cfg, batch, work, batch_id)
        assert not report["threshold_exceeded"]
        return transform_batch(self.cfg, batch_id, work / "validated", self.store, work / "transform")


@pytest.fixture
def engine(tmp_path: Path, cfg: PipelineConfig, write_batch: Any) -> Engine:
    return Engine(tmp_path, cfg, write_batch)


def processed(cfg: PipelineConfig, batches: list[Path], out: Path, kpis_of: Any) -> tuple[Any, Any]:
    process_batches(cfg, batches, out)
    return kpis_of(out)


def tables_bytes(out: Path) -> tuple[bytes, bytes]:
    return (out / "OrderKPI.json").read_bytes(), (out / "CategoryKPI.json").read_bytes()


def assert_oracle(batches: list[Path], got: tuple[Any, Any]) -> None:
    expected = oracle(batches)
    assert got == (expected.order_kpi, expected.category_kpi)


# ------------------------------------------------------------------------------------------------ replacement


def test_later_batch_replaces_a_key_nothing_counted_twice(engine: Engine, cfg: PipelineConfig, tmp_path: Path,
                                                          kpis_of: Any) -> None:
    a = engine.batch(orders=[order(1, "01"), order(2, "01", user=8)],
                     items=[item(1, 1, 1, "9.50"), item(2, 2, 2, "20.00")])
    b = engine.batch(orders=[order(1, "01", status="Returned")], items=[item(1, 1, 2, "12.00", qty=2)])
    orders, cats = processed(cfg, [a, b], tmp_path / "out", kpis_of)
    assert orders == {"2025-03-01": {"total_orders": D(2), "total_revenue": D("44.00"), "total_items_sold": D(3),
                                     "return_rate": D("0.5"), "unique_customers": D(2)}}
    assert cats == {("Toys", "2025-03-01"): {"daily_revenue": D("44.00"), "avg_order_value": D("22.00"),
                                             "avg_return_rate": D(0)}}  # item 1 is Toys now; Books is gone
    assert_oracle([a, b], (orders, cats))


def test_state_is_kept_across_calls(engine: Engine, cfg: PipelineConfig, tmp_path: Path, kpis_of: Any) -> None:
    a = engine.batch(orders=[order(1, "01"), order(2, "02")], items=[item(1, 1, 1, "5.00"), item(2, 2, 2, "7.00")])
    b = engine.batch(orders=[order(2, "03"), order(3, "01")], items=[item(3, 3, 1, "1.00")])
    process_batches(cfg, [a], tmp_path / "out")
    second = process_batches(cfg, [b], tmp_path / "out")
    assert [r["batch_id"] for r in second["batches"]] == [local_batch_id(cfg, b)]  # report: this call's batches
    together = processed(cfg, [a, b], tmp_path / "together", kpis_of)
    assert kpis_of(tmp_path / "out") == together
    assert_oracle([a, b], together)


def test_a_day_split_across_batches_equals_the_day_in_one_batch(engine: Engine, cfg: PipelineConfig, tmp_path: Path,
                                                                kpis_of: Any) -> None:
    orders = [order(i, "01", user=i % 3) for i in range(1, 7)]
    items = [item(i, i, 1 + i % 2, f"{i}.25", qty=i % 3 + 1, status="Returned" if i % 4 == 0 else "") for i in
             range(1, 7)]
    whole = engine.batch(orders=orders, items=items)
    first = engine.batch(orders=orders[:3], items=items[:3])
    second = engine.batch(orders=orders[3:], items=items[3:])
    assert processed(cfg, [whole], tmp_path / "one", kpis_of) == processed(cfg, [first, second], tmp_path / "two",
                                                                           kpis_of)


# ------------------------------------------------------------------------------------------------ moved orders


def test_moved_order_takes_its_items_not_resent(engine: Engine, cfg: PipelineConfig, tmp_path: Path,
                                                kpis_of: Any) -> None:
    a = engine.batch(orders=[order(1, "01", status="Returned"), order(2, "01", user=8)],
                     items=[item(1, 1, 1, "10.00", status="Returned"), item(2, 1, 2, "5.00", qty=2),
                            item(3, 2, 1, "3.00")])
    b = engine.batch(products=[], orders=[order(1, "05", status="Returned")], items=[])
    engine.transform(a)
    result = engine.transform(b)
    assert result.dates == ["2025-03-01", "2025-03-05"]  # both dates recomputed
    orders, cats = processed(cfg, [a, b], tmp_path / "out", kpis_of)
    assert orders == {
        "2025-03-01": {"total_orders": D(1), "total_revenue": D("3.00"), "total_items_sold": D(1),
                       "return_rate": D(0), "unique_customers": D(1)},
        "2025-03-05": {"total_orders": D(1), "total_revenue": D("20.00"), "total_items_sold": D(3),
                       "return_rate": D(1), "unique_customers": D(1)},
    }
    assert cats == {
        ("Books", "2025-03-01"): {"daily_revenue": D("3.00"), "avg_order_value": D("3.00"), "avg_return_rate": D(0)},
        ("Books", "2025-03-05"): {"daily_revenue": D("10.00"), "avg_order_value": D("10.00"),
                                  "avg_return_rate": D(1)},
        ("Toys", "2025-03-05"): {"daily_revenue": D("10.00"), "avg_order_value": D("10.00"), "avg_return_rate": D(0)},
    }
    assert_oracle([a, b], (orders, cats))


def test_old_date_left_empty_is_deleted(engine: Engine, cfg: PipelineConfig, tmp_path: Path, kpis_of: Any,
                                        kpis_of_tables: Any) -> None:
    a = engine.batch(orders=[order(1, "01")], items=[item(1, 1, 1, "10.00"), item(2, 1, 2, "20.00")])
    b = engine.batch(products=[], orders=[order(1, "02", time="00:30:00")], items=[])
    engine.transform(a)
    result = engine.transform(b)
    assert result.tables["OrderKPI"]["2025-03-01"] == []  # an empty list: delete the date's old items
    assert result.tables["CategoryKPI"]["2025-03-01"] == []
    orders, cats = kpis_of_tables(result.tables)
    assert orders["2025-03-02"]["total_revenue"] == D("30.00")
    assert set(cats) == {("Books", "2025-03-02"), ("Toys", "2025-03-02")}
    # and the user's tables lose the date
    out_orders, out_cats = processed(cfg, [a, b], tmp_path / "out", kpis_of)
    assert list(out_orders) == ["2025-03-02"]
    assert {d for _, d in out_cats} == {"2025-03-02"}


def test_moved_order_with_some_items_resent(engine: Engine, cfg: PipelineConfig, tmp_path: Path,
                                            kpis_of: Any) -> None:
    a = engine.batch(orders=[order(1, "01")], items=[item(1, 1, 1, "10.00"), item(2, 1, 2, "20.00")])
    b = engine.batch(orders=[order(1, "03")], items=[item(2, 1, 2, "15.00", qty=3)])  # re-priced; item 1 not re-sent
    orders, cats = processed(cfg, [a, b], tmp_path / "out", kpis_of)
    assert list(orders) == ["2025-03-03"]
    assert orders["2025-03-03"]["total_revenue"] == D("55.00")
    assert orders["2025-03-03"]["total_items_sold"] == 4
    assert_oracle([a, b], (orders, cats))


def test_order_moved_twice_and_back(engine: Engine, cfg: PipelineConfig, tmp_path: Path, kpis_of: Any) -> None:
    a = engine.batch(orders=[order(1, "01"), order(2, "01")], items=[item(1, 1, 1, "10.00"), item(2, 2, 2, "2.00")])
    b = engine.batch(products=[], orders=[order(1, "02")])
    c = engine.batch(products=[], orders=[order(1, "03")])
    d = engine.batch(products=[], orders=[order(1, "01", time="12:00:00")])
    for n, batches in enumerate(([a, b], [a, b, c], [a, b, c, d])):
        got = processed(cfg, batches, tmp_path / f"out{n}", kpis_of)
        assert_oracle(batches, got)
    orders, _ = kpis_of(tmp_path / "out2")
    assert list(orders) == ["2025-03-01"] and orders["2025-03-01"]["total_revenue"] == D("12.00")


def test_order_moved_by_timezone_offset_only(engine: Engine, cfg: PipelineConfig, tmp_path: Path,
                                             kpis_of: Any) -> None:
    """The same wall-clock time with an offset is another instant and can be another UTC date."""
    a = engine.batch(orders=[order(1, "01", time="22:00:00")], items=[item(1, 1, 1, "4.00")])
    b = engine.batch(products=[], orders=[order(1, "01", time="22:00:00-03:00")])
    orders, _ = processed(cfg, [a, b], tmp_path / "out", kpis_of)
    assert list(orders) == ["2025-03-02"] and orders["2025-03-02"]["total_revenue"] == D("4.00")


def test_item_moved_to_another_order(engine: Engine, cfg: PipelineConfig, tmp_path: Path, kpis_of: Any) -> None:
    a = engine.batch(orders=[order(1, "01"), order(2, "02", user=8)],
                     items=[item(1, 1, 1, "10.00"), item(2, 2, 2, "20.00")])
    b = engine.batch(orders=[order(2, "02", user=8)], items=[item(1, 2, 1, "10.00")])
    orders, cats = processed(cfg, [a, b], tmp_path / "out", kpis_of)
    assert orders["2025-03-01"] == {"total_orders": D(1), "total_revenue": D(0), "total_items_sold": D(0),
                                    "return_rate": D(0), "unique_customers": D(1)}
    assert orders["2025-03-02"]["total_revenue"] == D("30.00")
    assert set(cats) == {("Books", "2025-03-02"), ("Toys", "2025-03-02")}
    assert cats[("Books", "2025-03-02")]["avg_order_value"] == D("10.00")
    assert_oracle([a, b], (orders, cats))


# ------------------------------------------------------------------------------------------------ categories


def test_item_category_comes_from_the_batch_that_brought_it(engine: Engine, cfg: PipelineConfig, tmp_path: Path,
                                                            kpis_of: Any) -> None:
    a = engine.batch(orders=[order(1, "01")], items=[item(1, 1, 1, "10.00")])
    comics = {**BOOKS, "category": "Comics"}
    b = engine.batch(products=[comics, TOYS], orders=[order(1, "01"), order(2, "01", user=8)],
                     items=[item(2, 2, 1, "6.00")])
    c = engine.batch(products=[comics], orders=[order(1, "04")])  # moves order 1: item 1 keeps Books
    orders, cats = processed(cfg, [a, b], tmp_path / "ab", kpis_of)
    assert set(cats) == {("Books", "2025-03-01"), ("Comics", "2025-03-01")}
    assert cats[("Books", "2025-03-01")]["daily_revenue"] == D("10.00")
    assert cats[("Comics", "2025-03-01")]["daily_revenue"] == D("6.00")
    assert_oracle([a, b], (orders, cats))
    orders, cats = processed(cfg, [a, b, c], tmp_path / "abc", kpis_of)
    assert set(cats) == {("Books", "2025-03-04"), ("Comics", "2025-03-01")}
    assert_oracle([a, b, c], (orders, cats))


# ------------------------------------------------------------------------------------------------ idempotence


def test_reprocessing_the_same_batch_changes_nothing(engine: Engine, cfg: PipelineConfig, tmp_path: Path) -> None:
    a = engine.batch(orders=[order(1, "01"), order(2, "02", status="Returned")],
                     items=[item(1, 1, 1, "10.00"), item(2, 2, 2, "0.10", qty=3, status="Returned")])
    out = tmp_path / "out"
    process_batches(cfg, [a], out)
    once = tables_bytes(out)
    again = process_batches(cfg, [a], out)
    assert tables_bytes(out) == once
    assert again["batches"][0]["status"] == "SKIPPED"
    assert again["batches"][0]["reason"].startswith("already processed as seq 1")
    process_batches(cfg, [a, a], tmp_path / "twice")
    assert tables_bytes(tmp_path / "twice") == once


def test_reprocessing_returns_the_same_items(engine: Engine) -> None:
    a = engine.batch(orders=[order(1, "01"), order(2, "02")], items=[item(1, 1, 1, "10.00"), item(2, 2, 2, "3.00")])
    first = engine.transform(a)
    second = engine.transform(a)
    assert (second.seq, second.dates, second.tables) == (first.seq, first.dates, first.tables)


def test_a_then_b_then_a_again_changes_nothing(engine: Engine, cfg: PipelineConfig, tmp_path: Path) -> None:
    a = engine.batch(orders=[order(1, "01"), order(2, "01", user=8), order(3, "02")],
                     items=[item(1, 1, 1, "10.00"), item(2, 1, 2, "20.00"), item(3, 2, 1, "5.00"),
                            item(4, 3, 2, "1.00")])
    # B moves order 1 (its items follow), replaces item 3 and moves item 4 to order 2
    b = engine.batch(orders=[order(1, "03", status="Returned"), order(2, "01", user=8)],
                     items=[item(3, 2, 2, "50.00"), item(4, 2, 1, "2.00")])
    out = tmp_path / "out"
    process_batches(cfg, [a, b], out)
    after_ab = tables_bytes(out)
    process_batches(cfg, [a], out)
    assert tables_bytes(out) == after_ab
    process_batches(cfg, [b], out)
    assert tables_bytes(out) == after_ab
    process_batches(cfg, [a, b, a, b, a], tmp_path / "many")
    assert tables_bytes(tmp_path / "many") == after_ab


def test_both_executors_give_the_same_result(tmp_path: Path, cfg: PipelineConfig, kpis_of: Any) -> None:
    """Three overlapping generated batches (re-sent, moved and invalid rows) through `kpipe process`
    with each executor: the same KPI tables, byte for byte, the same reports and rejected files."""
    from kpipe.generate import generate_batches

    batches = generate_batches(tmp_path / "gen", 300, batches=3, invalid_fraction=0.05, seed=2, days=4, files_per_dataset=3)
    duck = process_batches(cfg, batches, tmp_path / "duckdb", executor="duckdb")
    ref = process_batches(cfg, batches, tmp_path / "petl", executor="petl")
    assert tables_bytes(tmp_path / "petl") == tables_bytes(tmp_path / "duckdb")
    assert [b["datasets"] for b in ref["batches"]] == [b["datasets"] for b in duck["batches"]]
    for path in sorted((tmp_path / "duckdb" / "rejected").rglob("*.csv")):
        assert (tmp_path / "petl" / path.relative_to(tmp_path / "duckdb")).read_bytes() == path.read_bytes(), path
    assert_oracle(batches, kpis_of(tmp_path / "duckdb"))


def test_batch_kpis_equal_a_recompute_from_the_store(tmp_path: Path, cfg: PipelineConfig) -> None:
    """A batch's KPIs come from the partitions its merge just wrote (and, for dates another dataset
    brought, the store's); after each batch of a sequence with re-sent, moved and replaced rows (and
    batches processed again after newer ones), they are exactly a recompute of those dates from the store."""
    from kpipe.engine.transform import recompute
    from kpipe.generate import generate_batches

    batches = generate_batches(tmp_path / "gen", 150, batches=3, invalid_fraction=0.05, seed=11, days=5)
    store = LocalStore(tmp_path / "store")
    for n, batch in enumerate([*batches, batches[0], batches[2], batches[1]]):
        work = tmp_path / f"w{n}"
        validate_batch(cfg, batch, work, f"b-{n}")
        result = transform_batch(cfg, f"b-{n}", work / "validated", store, work / "transform")
        assert result.dates
        assert recompute(cfg, result.dates, store, work / "recompute") == result.tables
