"""The worked example at the end of docs/semantics.md, number for number, through the engine."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import PipelineConfig, parse_config
from kpipe.engine.store import LocalStore
from kpipe.engine.transform import transform_batch
from kpipe.engine.validate import validate_batch
from kpipe.process import process_batches
from tests.oracle import oracle


@pytest.fixture(params=["duckdb", "petl"])
def cfg(request: pytest.FixtureRequest, config_text: str) -> PipelineConfig:
    """Every test here runs on both executors: the default config with `engine.executor` set."""
    base = parse_config(config_text)
    return base.model_copy(update={"engine": base.engine.model_copy(update={"executor": request.param})})


PRODUCTS = [
    {"id": 1, "sku": "S1", "cost": "5", "category": "Books", "name": "A book, \"annotated\"", "retail_price": "10.00"},
    {"id": 2, "sku": "S2", "cost": "9", "category": "Toys", "name": "A toy", "retail_price": "20.00"},
]
ORDERS = [
    {"order_id": 1, "user_id": 7, "status": "Returned", "created_at": "2025-03-01T10:00:00", "num_of_item": 2},
    {"order_id": 2, "user_id": 7, "status": "Delivered", "created_at": "2025-03-01T23:00:00-02:00", "num_of_item": 1},
]
ITEMS = [
    {"id": 1, "order_id": 1, "user_id": 7, "product_id": 1, "status": "Returned", "sale_price": "9.50"},
    {"id": 2, "order_id": 1, "user_id": 7, "product_id": 2, "status": "Delivered", "sale_price": "20.00", "quantity": 2},
    {"id": 3, "order_id": 2, "user_id": 7, "product_id": 1, "sale_price": "10.00"},
]

D = Decimal
EXPECTED_ORDERS = {
    "2025-03-01": {"total_orders": D(1), "total_revenue": D("49.50"), "total_items_sold": D(3),
                   "return_rate": D("1.0"), "unique_customers": D(1)},
    "2025-03-02": {"total_orders": D(1), "total_revenue": D("10.00"), "total_items_sold": D(1),
                   "return_rate": D("0.0"), "unique_customers": D(1)},
}
EXPECTED_CATEGORIES = {
    ("Books", "2025-03-01"): {"daily_revenue": D("9.50"), "avg_order_value": D("9.50"), "avg_return_rate": D("1.0")},
    ("Toys", "2025-03-01"): {"daily_revenue": D("40.00"), "avg_order_value": D("40.00"), "avg_return_rate": D("0.0")},
    ("Books", "2025-03-02"): {"daily_revenue": D("10.00"), "avg_order_value": D("10.00"), "avg_return_rate": D("0.0")},
}


@pytest.fixture
def batch(tmp_path: Path, write_batch: Any) -> Path:
    return write_batch(tmp_path / "batch", PRODUCTS, ORDERS, ITEMS)


def test_worked_example_through_process_batches(batch: Path, tmp_path: Path, cfg: PipelineConfig,
                                                kpis_of: Any) -> None:
    report = process_batches(cfg, [batch], tmp_path / "out")
    orders, categories = kpis_of(tmp_path / "out")
    assert orders == EXPECTED_ORDERS
    assert categories == EXPECTED_CATEGORIES
    (only,) = report["batches"]
    assert only["status"] == "SUCCEEDED"
    assert {ds: (s["rows_in"], s["rows_valid"], s["rows_rejected"]) for ds, s in only["datasets"].items()} == {
        "products": (2, 2, 0), "orders": (2, 2, 0), "order_items": (3, 3, 0)}


def test_worked_example_matches_the_oracle(batch: Path, tmp_path: Path, cfg: PipelineConfig, kpis_of: Any) -> None:
    process_batches(cfg, [batch], tmp_path / "out")
    expected = oracle([batch])
    assert kpis_of(tmp_path / "out") == (expected.order_kpi, expected.category_kpi)


def test_worked_example_tables_are_dynamodb_numbers(batch: Path, tmp_path: Path, cfg: PipelineConfig,
                                                    kpis_of_tables: Any) -> None:
    validate_batch(cfg, batch, tmp_path / "work", "b-worked")
    store = LocalStore(tmp_path / "processed")
    result = transform_batch(cfg, "b-worked", tmp_path / "work" / "validated", store, tmp_path / "transform")
    assert result.dates == ["2025-03-01", "2025-03-02"]
    for table, by_date in result.tables.items():
        key_fields = cfg.kpis[table].key
        for date, items in by_date.items():
            for item in items:
                assert item["order_date"] == date
                for name, value in item.items():
                    if name in key_fields:
                        assert type(value) is str, (table, name, value)
                    else:  # DynamoDB refuses floats: every stored number is a Decimal or an int
                        assert type(value) in (Decimal, int), (table, name, value, type(value))
    orders, categories = kpis_of_tables(result.tables)
    assert orders == EXPECTED_ORDERS
    assert categories == EXPECTED_CATEGORIES
    first = result.tables["OrderKPI"]["2025-03-01"][0]
    assert str(first["total_revenue"]) == "49.50"  # money to 2 places
    assert str(first["return_rate"]) == "1.0000"  # rates to 4 places
    toys = next(i for i in result.tables["CategoryKPI"]["2025-03-01"] if i["category"] == "Toys")
    assert (str(toys["daily_revenue"]), str(toys["avg_order_value"]), str(toys["avg_return_rate"])) == (
        "40.00", "40.00", "0.0000")


def test_worked_example_json_output_is_plain_json_numbers(batch: Path, tmp_path: Path, cfg: PipelineConfig) -> None:
    process_batches(cfg, [batch], tmp_path / "out")
    items = json.loads((tmp_path / "out" / "OrderKPI.json").read_text(encoding="utf-8"))
    assert [i["order_date"] for i in items] == ["2025-03-01", "2025-03-02"]  # sorted by key
    assert items[0]["total_revenue"] == 49.5 and items[0]["total_orders"] == 1
    cats = json.loads((tmp_path / "out" / "CategoryKPI.json").read_text(encoding="utf-8"))
    assert [(i["category"], i["order_date"]) for i in cats] == [
        ("Books", "2025-03-01"), ("Books", "2025-03-02"), ("Toys", "2025-03-01")]


def test_worked_example_in_another_timezone(batch: Path, tmp_path: Path, config_text: str, kpis_of: Any) -> None:
    """The pipeline timezone is a YAML edit: in Sao Paulo (-03:00) order 2 is 22:00 on the 1st, and the naive
    10:00 of order 1 is already local, so both orders share one date."""
    from chalicelib.config import load_config

    path = tmp_path / "pipeline.yaml"
    assert "timezone: UTC\n" in config_text
    path.write_text(config_text.replace("timezone: UTC\n", "timezone: America/Sao_Paulo\n"), encoding="utf-8")
    process_batches(load_config(path), [batch], tmp_path / "out")
    orders, categories = kpis_of(tmp_path / "out")
    assert orders == {"2025-03-01": {"total_orders": D(2), "total_revenue": D("59.50"), "total_items_sold": D(4),
                                     "return_rate": D("0.5"), "unique_customers": D(1)}}
    assert categories[("Books", "2025-03-01")] == {"daily_revenue": D("19.50"), "avg_order_value": D("9.75"),
                                                   "avg_return_rate": D("0.5")}
    expected = oracle([batch], tz="America/Sao_Paulo")
    assert (orders, categories) == (expected.order_kpi, expected.category_kpi)
