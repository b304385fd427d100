"""The DynamoDB shape of KPI tables (chalicelib/kpi_tables.py): keys of 1, 2 and 3 fields, numeric keys,
the period GSI, tables spanning every date, and the logical -> deployed name mapping of the environment."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from chalicelib.config import default_config_path, load_config, parse_config
from chalicelib.kpi_tables import SORT_KEY, TableShape, key_text, table_names_from_env, table_shape, table_shapes

EXTRA = Path(__file__).resolve().parents[1] / "configs" / "extra_tables.yaml"


def keys(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(k["AttributeName"], k["KeyType"]) for k in schema]


def types(shape: TableShape) -> dict[str, str]:
    return {a["AttributeName"]: a["AttributeType"] for a in shape.attribute_definitions()}


def test_the_default_tables_keep_their_contract_shapes() -> None:
    shapes = table_shapes(load_config(default_config_path()))
    assert list(shapes) == ["OrderKPI", "CategoryKPI"]
    order, cat = shapes["OrderKPI"], shapes["CategoryKPI"]
    assert keys(order.key_schema()) == [("order_date", "HASH")] and order.indexes == ()
    assert order.period == ("order_date", "day") and order.period_index is None
    assert keys(cat.key_schema()) == [("category", "HASH"), ("order_date", "RANGE")]
    assert types(cat) == {"category": "S", "order_date": "S"}
    # the declared index is the period index: no automatic one beside it
    assert cat.index_definitions() == [
        {
            "IndexName": "order_date-index",
            "KeySchema": [{"AttributeName": "order_date", "KeyType": "HASH"}, {"AttributeName": "category", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"},
        }
    ]
    assert cat.period_index is not None and cat.period_index.name == "order_date-index"
    assert cat.metrics == ("daily_revenue", "avg_order_value", "avg_return_rate")  # store: false left out


def test_two_field_key_off_the_period_gets_an_automatic_period_index_and_a_week_key_none() -> None:
    shapes = table_shapes(load_config(EXTRA))
    brand, weekly = shapes["BrandKPI"], shapes["WeeklyKPI"]
    assert keys(brand.key_schema()) == [("brand", "HASH"), ("order_date", "RANGE")]
    (index,) = brand.indexes
    assert (index.name, index.hash_key, index.range_key, index.declared) == ("order_date-index", "order_date", "brand", False)
    assert brand.period_index == index
    assert keys(weekly.key_schema()) == [("order_week", "HASH")]
    assert weekly.period == ("order_week", "week") and weekly.indexes == () and weekly.period_index is None


def test_numeric_keys_three_field_keys_and_tables_spanning_every_date() -> None:
    doc = yaml.safe_load(default_config_path().read_text())
    doc["datasets"]["products"]["columns"]["brand"] = {"type": "string"}
    doc["datasets"]["order_items"]["derived"]["brand"] = {"lookup": {"via": "product_id", "field": "brand"}}
    doc["kpis"]["UserKPI"] = {"key": ["user_id"], "metrics": {"orders": {"count": "order_id", "from": "orders"}}}
    doc["kpis"]["BrandDaily"] = {
        "key": ["brand", "product_id", "order_date"],
        "metrics": {"top": {"max": "sale_price", "from": "order_items"}},
    }
    cfg = parse_config(yaml.safe_dump(doc))
    user = table_shape(cfg, "UserKPI")
    assert user.period is None and user.indexes == ()  # spans every date: replaced whole
    assert types(user) == {"user_id": "N"}
    daily = table_shape(cfg, "BrandDaily")
    assert daily.key_attributes() == ("brand", SORT_KEY)
    assert keys(daily.key_schema()) == [("brand", "HASH"), (SORT_KEY, "RANGE")]
    assert daily.field_type("product_id") == "N" and daily.attribute_type(SORT_KEY) == "S"  # the joined key is text
    (index,) = daily.indexes  # order_date is the period, off the hash key
    assert (index.name, index.hash_key, index.range_key) == ("order_date-index", "order_date", "brand")
    assert types(daily) == {"brand": "S", SORT_KEY: "S", "order_date": "S"}
    item = {"brand": "Acme", "product_id": Decimal("7"), "order_date": "2025-03-01", "top": Decimal("9.5")}
    stored = daily.stored(item)
    assert stored[SORT_KEY] == "7#2025-03-01" and stored["product_id"] == Decimal("7")
    assert daily.key_of(item) == {"brand": "Acme", SORT_KEY: "7#2025-03-01"}
    assert daily.public(stored) == item


def test_shapes_from_parts_and_their_errors() -> None:
    shape = TableShape.of_key("T", ["a", "b"], period=("b", "month"), index=("by-b", "b"), types={"a": "N"})
    assert [i.name for i in shape.indexes] == ["by-b"]  # the declared index serves the period
    assert shape.key_signature() == (("a", "HASH", "N"), ("b", "RANGE", "S"))
    with pytest.raises(ValueError, match="not a key field"):
        TableShape.of_key("T", ["a"], index=("by-c", "c"))
    with pytest.raises(ValueError, match="not a DynamoDB index name"):
        TableShape.of_key("T", ["a", "b"], index=("b i", "b"))
    with pytest.raises(ValueError, match="1 to 3"):
        TableShape.of_key("T", ["a", "b", "c", "d"])
    with pytest.raises(KeyError, match="no index"):
        shape.index("nope")


def test_key_text_is_exact_and_short() -> None:
    assert [key_text(v) for v in (Decimal("7.000"), Decimal("0.50"), 3, True, "x#y")] == ["7", "0.5", "3", "true", "x#y"]


def test_deployed_names_from_the_environment() -> None:
    env = {"KPIPE_KPI_TABLES": json.dumps({"OrderKPI": "p-OrderKPI", "BrandKPI": "p-BrandKPI"}), "KPIPE_CATEGORY_TABLE": "Cat-dev"}
    assert table_names_from_env(env) == {"OrderKPI": "p-OrderKPI", "BrandKPI": "p-BrandKPI", "CategoryKPI": "Cat-dev"}
    assert table_names_from_env({"KPIPE_ORDER_TABLE": "O"}) == {"OrderKPI": "O"}  # the older variables alone
    assert table_names_from_env({}) == {}
    with pytest.raises(ValueError, match="not JSON"):
        table_names_from_env({"KPIPE_KPI_TABLES": "{nope"})
