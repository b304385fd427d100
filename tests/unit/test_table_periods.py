"""KPI tables keyed by any fields (docs/semantics.md "KPI tables"): a table with a date key is replaced a
period at a time, one without spans every date and is recomputed whole; both stay right across
batches that move and change rows, and re-processing changes nothing. Expected values by hand."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib.config import PipelineConfig, parse_config
from kpipe.engine.transform import date_groups, period_value
from kpipe.process import process_batches

D = Decimal
EXTRA_TABLES = {
    "BrandTotals": {
        "key": ["brand"],
        "metrics": {
            "revenue": {"sum": "revenue", "from": "order_items"},
            "avg_price": {"avg": "sale_price", "from": "order_items", "round": 2},
            "items": {"count": "id", "from": "order_items"},
        },
    },
    "BrandDaily": {
        "key": ["brand", "category", "order_date"],
        "metrics": {"top_price": {"max": "sale_price", "from": "order_items"}},
    },
}


@pytest.fixture(params=["duckdb", "petl"])
def cfg(request: pytest.FixtureRequest, config_text: str) -> PipelineConfig:
    """The default pipeline plus a brand column, its lookup on items, and two tables keyed by it."""
    doc = yaml.safe_load(config_text)
    doc["datasets"]["products"]["columns"]["brand"] = {"type": "string"}
    doc["datasets"]["order_items"]["derived"]["brand"] = {"lookup": {"via": "product_id", "field": "brand"}}
    doc["kpis"].update(EXTRA_TABLES)
    doc["engine"] = {"executor": request.param}
    return parse_config(yaml.safe_dump(doc, sort_keys=False))


PRODUCTS = [
    {"id": 1, "category": "Jeans", "retail_price": "30", "brand": "Acme"},
    {"id": 2, "category": "Tops", "retail_price": "20", "brand": "Acme"},
    {"id": 3, "category": "Tops", "retail_price": "10", "brand": ""},  # no brand: in no brand item
]


def order(oid: int, day: str) -> dict[str, Any]:
    return {"order_id": oid, "user_id": 9, "status": "Complete", "created_at": f"2025-03-{day}T10:00:00"}


def item(iid: int, oid: int, pid: int, price: str, qty: int = 1) -> dict[str, Any]:
    return {"id": iid, "order_id": oid, "product_id": pid, "sale_price": price, "quantity": qty, "status": ""}


def table(out: Path, name: str) -> list[dict[str, Any]]:
    return json.loads((out / f"{name}.json").read_text(encoding="utf-8"), parse_float=Decimal, parse_int=Decimal)


def test_periods_of_the_default_and_added_tables(cfg: PipelineConfig) -> None:
    assert cfg.period_of("OrderKPI") == ("order_date", "day")
    assert cfg.period_of("CategoryKPI") == ("order_date", "day")
    assert cfg.period_of("BrandDaily") == ("order_date", "day")  # a three-field key, the date last
    assert cfg.period_of("BrandTotals") is None  # spans every date


def test_tables_without_and_with_a_date_key_across_batches(tmp_path: Path, cfg: PipelineConfig, write_batch: Any) -> None:
    one = write_batch(
        tmp_path / "b1", PRODUCTS, [order(1, "01"), order(2, "02")],
        [item(1, 1, 1, "10.00", 2), item(2, 1, 2, "5.00"), item(3, 2, 3, "7.00"), item(4, 2, 1, "3.00")],
    )
    # order 1 moves to the 5th and its first item's price changes; a new order on the 6th
    two = write_batch(
        tmp_path / "b2", PRODUCTS, [order(1, "05"), order(3, "06")],
        [item(1, 1, 1, "12.00", 2), item(5, 3, 2, "1.50")],
    )
    out = tmp_path / "out"
    report = process_batches(cfg, [one], out)
    assert report["batches"][0]["null_key_rows"] == {"OrderKPI": 0, "CategoryKPI": 0, "BrandTotals": 1, "BrandDaily": 1}
    assert table(out, "BrandTotals") == [{"brand": "Acme", "revenue": D("28"), "avg_price": D("6"), "items": 3}]

    report = process_batches(cfg, [two], out)
    assert report["batches"][0]["null_key_rows"]["BrandTotals"] == 0
    # every Acme item so far, in its current version: 12*2 + 5 + 3 + 1.50; prices 12, 5, 3, 1.50
    assert table(out, "BrandTotals") == [{"brand": "Acme", "revenue": D("33.5"), "avg_price": D("5.38"), "items": 4}]
    daily = {(i["category"], i["order_date"]): i["top_price"] for i in table(out, "BrandDaily")}
    assert daily == {("Jeans", "2025-03-02"): D("3"), ("Jeans", "2025-03-05"): D("12"), ("Tops", "2025-03-05"): D("5"), ("Tops", "2025-03-06"): D("1.5")}
    before = {name: table(out, name) for name in ("BrandTotals", "BrandDaily", "OrderKPI", "CategoryKPI")}

    replay = process_batches(cfg, [one], out)  # an older batch again: it loses to the later one everywhere
    assert replay["batches"][0]["status"] == "SKIPPED"
    assert {name: table(out, name) for name in before} == before


def test_period_values_follow_date_of() -> None:
    assert period_value("2025-03-05", "day") == "2025-03-05"
    assert period_value("2025-03-05", "week") == "2025-03-03"  # a Wednesday: its ISO week's Monday
    assert period_value("2025-03-03", "week") == "2025-03-03"
    assert period_value("2025-01-01", "week") == "2024-12-30"  # across a year's edge
    assert period_value("2025-03-31", "month") == "2025-03"


def test_date_groups_are_runs_of_consecutive_dates() -> None:
    dates = [f"2025-03-{d:02d}" for d in (9, 1, 2, 3, 8, 4, 5, 6, 7)]
    groups = date_groups(dates, 3)
    assert groups == [["2025-03-01", "2025-03-02", "2025-03-03"], ["2025-03-04", "2025-03-05", "2025-03-06"], ["2025-03-07", "2025-03-08", "2025-03-09"]]
    assert date_groups(dates[:2], 4) == [[], ["2025-03-01"], [], ["2025-03-09"]]


def test_a_weekly_table_recomputes_whole_weeks_across_batches(tmp_path: Path, config_text: str, write_batch: Any) -> None:
    """A week key (date_of grain week, looked up by the items): a batch touching one day of a week
    recomputes that whole week from every stored row, an order moved to another week leaves the old one."""
    doc = yaml.safe_load(config_text)
    doc["datasets"]["orders"]["derived"]["order_week"] = {"date_of": {"field": "created_at", "grain": "week"}}
    doc["datasets"]["order_items"]["derived"]["order_week"] = {"lookup": {"via": "order_id", "field": "order_week"}}
    doc["kpis"]["WeeklyKPI"] = {"key": ["order_week"], "metrics": {
        "top_price": {"max": "sale_price", "from": "order_items"}, "orders": {"count_distinct": "order_id", "from": "order_items"}}}
    cfg = parse_config(yaml.safe_dump(doc, sort_keys=False))
    assert cfg.period_of("WeeklyKPI") == ("order_week", "week")
    one = write_batch(tmp_path / "b1", PRODUCTS, [order(1, "03"), order(2, "04"), order(3, "10")],
                      [item(1, 1, 1, "10.00"), item(2, 2, 2, "30.00"), item(3, 3, 1, "5.00")])
    two = write_batch(tmp_path / "b2", PRODUCTS, [order(2, "11"), order(4, "05")], [item(4, 4, 2, "7.00")])  # 2 moves a week on
    out = tmp_path / "out"
    process_batches(cfg, [one], out)
    assert {i["order_week"]: (i["top_price"], i["orders"]) for i in table(out, "WeeklyKPI")} == {"2025-03-03": (D(30), 2), "2025-03-10": (D(5), 1)}
    process_batches(cfg, [two], out)
    assert {i["order_week"]: (i["top_price"], i["orders"]) for i in table(out, "WeeklyKPI")} == {"2025-03-03": (D(10), 2), "2025-03-10": (D(30), 2)}
