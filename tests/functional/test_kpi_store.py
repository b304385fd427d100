"""The DynamoDB KPI store on moto: replace-a-date semantics, GSI use, Decimal-only, <= 25-item batches, reads."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.config import default_config_path, load_config
from chalicelib.kpi_store import (
    KpiStore,
    KpiTableStore,
    QueryError,
    RangeTooLongError,
    ReplaceStats,
    check_numbers,
    days_between,
    dump_table,
    plain,
)
from chalicelib.kpi_tables import SORT_KEY, TableShape
from tests.functional.conftest import create_shape_table


def cat(category: str, date: str, revenue: str = "10.00") -> dict[str, Any]:
    return {
        "category": category,
        "order_date": date,
        "daily_revenue": Decimal(revenue),
        "avg_order_value": Decimal(revenue),
        "avg_return_rate": Decimal("0.0"),
    }


def order(date: str, orders: int = 1, revenue: str = "49.50") -> dict[str, Any]:
    return {
        "order_date": date,
        "total_orders": orders,
        "total_revenue": Decimal(revenue),
        "total_items_sold": 3,
        "return_rate": Decimal("1.0"),
        "unique_customers": 1,
    }


class RecordingTable:
    """Delegates to a real (moto) Table resource and records Query arguments, to see which index was used."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.queries: list[dict[str, Any]] = []

    def query(self, **kwargs: Any) -> Any:
        self.queries.append(kwargs)
        return self._table.query(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


@pytest.fixture
def store(dynamodb: Any, kpi_tables: dict[str, Any]) -> KpiStore:
    return KpiStore(dynamodb, load_config(default_config_path()))


@pytest.fixture
def batch_sizes(dynamodb: Any) -> list[int]:
    """Items per BatchWriteItem request, seen on the wire (the client the resources share)."""
    sizes: list[int] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sizes.append(sum(len(requests) for requests in params["RequestItems"].values()))

    dynamodb.meta.client.meta.events.register("provide-client-params.dynamodb.BatchWriteItem", record)
    return sizes


def _all(table: Any) -> list[tuple[str, ...]]:
    return sorted(tuple(item[k["AttributeName"]] for k in table.key_schema) for item in table.scan()["Items"])


def test_replace_dates_deletes_old_items_of_those_dates_only(store: KpiStore, kpi_tables: dict[str, Any]) -> None:
    store.replace_dates(
        "CategoryKPI",
        {"2025-03-01": [cat("Books", "2025-03-01"), cat("Toys", "2025-03-01")], "2025-03-02": [cat("Books", "2025-03-02")]},
    )
    stats = store.replace_dates("CategoryKPI", {"2025-03-01": [cat("Books", "2025-03-01", "99.99")]})
    assert (stats.put, stats.deleted) == (1, 1)
    table = kpi_tables["CategoryKPI"]
    assert _all(table) == [("Books", "2025-03-01"), ("Books", "2025-03-02")]
    item = table.get_item(Key={"category": "Books", "order_date": "2025-03-01"})["Item"]
    assert item["daily_revenue"] == Decimal("99.99")


def test_an_empty_list_empties_the_date(store: KpiStore, kpi_tables: dict[str, Any]) -> None:
    store.replace_dates("CategoryKPI", {"2025-03-01": [cat("Books", "2025-03-01"), cat("Toys", "2025-03-01")]})
    store.replace_dates("OrderKPI", {"2025-03-01": [order("2025-03-01")], "2025-03-02": [order("2025-03-02")]})
    assert store.replace_dates("CategoryKPI", {"2025-03-01": []}).deleted == 2
    assert store.replace_dates("OrderKPI", {"2025-03-01": []}).deleted == 1
    assert _all(kpi_tables["CategoryKPI"]) == []
    assert _all(kpi_tables["OrderKPI"]) == [("2025-03-02",)]


def test_category_dates_are_found_through_the_gsi_with_pagination(dynamodb: Any, kpi_tables: dict[str, Any]) -> None:
    recording = RecordingTable(dynamodb.Table("CategoryKPI"))
    table = KpiTableStore(recording, ("category", "order_date"), date_index="order_date-index", page_size=7)
    table.replace_dates({"2025-03-01": [cat(f"C{i:02d}", "2025-03-01") for i in range(30)]})
    recording.queries.clear()
    stats = table.replace_dates({"2025-03-01": [cat("C00", "2025-03-01")]})
    assert stats.deleted == 29
    assert recording.queries, "a date's old items must be looked up"
    assert all(q["IndexName"] == "order_date-index" for q in recording.queries)
    assert len(recording.queries) >= 5  # 30 keys in pages of 7: the LastEvaluatedKey loop ran
    assert _all(kpi_tables["CategoryKPI"]) == [("C00", "2025-03-01")]


def test_order_dates_are_found_on_the_partition_key_not_an_index(dynamodb: Any, kpi_tables: dict[str, Any]) -> None:
    recording = RecordingTable(dynamodb.Table("OrderKPI"))
    table = KpiTableStore(recording, ("order_date",))
    table.replace_dates({"2025-03-01": [order("2025-03-01")]})
    assert recording.queries and all("IndexName" not in q for q in recording.queries)
    assert all(q["ConsistentRead"] for q in recording.queries)


def test_writes_are_batched_at_most_25_items(store: KpiStore, kpi_tables: dict[str, Any], batch_sizes: list[int]) -> None:
    items = [cat(f"Cat{i:03d}", "2025-03-01") for i in range(60)]
    store.replace_dates("CategoryKPI", {"2025-03-01": items})
    assert sum(batch_sizes) == 60
    assert len(batch_sizes) == 3 and max(batch_sizes) <= 25
    batch_sizes.clear()
    stats = store.replace_dates("CategoryKPI", {"2025-03-01": items[:5]})  # 5 puts + 55 deletes
    assert (stats.put, stats.deleted) == (5, 55)
    assert sum(batch_sizes) == 60 and max(batch_sizes) <= 25
    assert len(_all(kpi_tables["CategoryKPI"])) == 5


def test_a_repeated_key_is_written_once_last_one_wins(store: KpiStore, kpi_tables: dict[str, Any]) -> None:
    stats = store.replace_dates("OrderKPI", {"2025-03-01": [order("2025-03-01", 1), order("2025-03-01", 2)]})
    assert stats.put == 1
    assert kpi_tables["OrderKPI"].get_item(Key={"order_date": "2025-03-01"})["Item"]["total_orders"] == 2


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"daily_revenue": 10.5}, TypeError),
        ({"extra": {"nested": [Decimal("1"), 2.0]}}, TypeError),
        ({"daily_revenue": Decimal("NaN")}, ValueError),
    ],
)
def test_floats_never_reach_dynamodb_and_nothing_is_half_written(
    store: KpiStore, kpi_tables: dict[str, Any], bad: dict[str, Any], error: type[Exception]
) -> None:
    good = cat("Books", "2025-03-01")
    with pytest.raises(error):
        store.replace_dates("CategoryKPI", {"2025-03-01": [good, {**cat("Toys", "2025-03-01"), **bad}]})
    assert _all(kpi_tables["CategoryKPI"]) == []


def test_items_must_carry_their_key_and_be_filed_under_their_date(store: KpiStore) -> None:
    with pytest.raises(ValueError, match="filed under"):
        store.replace_dates("CategoryKPI", {"2025-03-02": [cat("Books", "2025-03-01")]})
    with pytest.raises(ValueError, match="missing"):
        store.replace_dates("CategoryKPI", {"2025-03-01": [{"order_date": "2025-03-01", "daily_revenue": Decimal(1)}]})
    with pytest.raises(KeyError, match="unknown KPI table"):
        store.replace_dates("Nope", {})


def test_stored_numbers_come_back_as_decimal(store: KpiStore) -> None:
    store.replace_dates("OrderKPI", {"2025-03-01": [order("2025-03-01")]})
    item = store.order_kpi("2025-03-01")
    assert item is not None
    assert item["total_revenue"] == Decimal("49.50")
    assert all(isinstance(v, Decimal) for k, v in item.items() if k != "order_date")


def test_table_lookup_by_logical_or_deployed_name(dynamodb: Any, kpi_tables: dict[str, Any]) -> None:
    store = KpiStore(dynamodb, load_config(default_config_path()), {"OrderKPI": "OrderKPI", "CategoryKPI": "CategoryKPI"})
    assert store.table("CategoryKPI") is store.categories
    assert store.table("OrderKPI") is store.orders
    with pytest.raises(ValueError, match="GSI"):
        KpiTableStore(dynamodb.Table("CategoryKPI"), ("category", "order_date"))


def test_reads_for_the_api(store: KpiStore) -> None:
    store.replace_dates("OrderKPI", {d: [order(d)] for d in ("2025-03-01", "2025-03-03", "2025-04-30")})
    store.replace_dates(
        "CategoryKPI",
        {
            "2025-03-01": [cat("Books", "2025-03-01"), cat("Toys", "2025-03-01")],
            "2025-03-03": [cat("Books", "2025-03-03")],
            "2025-03-09": [cat("Books", "2025-03-09")],
        },
    )
    assert store.order_kpi("2025-03-02") is None
    found = store.orders_between(dt.date(2025, 3, 1), dt.date(2025, 3, 31))
    assert [i["order_date"] for i in found] == ["2025-03-01", "2025-03-03"]
    assert [i["order_date"] for i in store.category_between("Books", "2025-03-02", "2025-03-09")] == [
        "2025-03-03",
        "2025-03-09",
    ]
    assert [i["order_date"] for i in store.category_between("Books", "2025-03-03")] == ["2025-03-03", "2025-03-09"]
    assert [i["order_date"] for i in store.category_between("Books", None, "2025-03-03")] == ["2025-03-01", "2025-03-03"]
    assert len(store.category_between("Books")) == 3
    assert [i["category"] for i in store.categories_of_date("2025-03-01")] == ["Books", "Toys"]
    assert store.category_exists("Toys") and not store.category_exists("Garden")


def test_orders_between_spans_several_batch_gets_and_is_capped(store: KpiStore) -> None:
    start = dt.date(2024, 1, 1)
    dates = [(start + dt.timedelta(days=i)).isoformat() for i in range(0, 366, 5)]
    store.replace_dates("OrderKPI", {d: [order(d)] for d in dates})
    found = store.orders_between(start, dt.date(2024, 12, 31))  # 366 days: 4 BatchGetItem requests
    assert [i["order_date"] for i in found] == dates
    with pytest.raises(RangeTooLongError, match="366"):
        store.orders_between(start, dt.date(2025, 1, 1))


def test_days_between_is_inclusive_and_refuses_reversed_ranges() -> None:
    assert days_between(dt.date(2025, 2, 27), dt.date(2025, 3, 1)) == ["2025-02-27", "2025-02-28", "2025-03-01"]
    with pytest.raises(ValueError, match="after"):
        days_between(dt.date(2025, 3, 2), dt.date(2025, 3, 1))


def test_dump_table_scans_every_page_sorted_by_key(store: KpiStore, kpi_tables: dict[str, Any]) -> None:
    store.replace_dates("CategoryKPI", {"2025-03-02": [cat("B", "2025-03-02")], "2025-03-01": [cat("B", "2025-03-01"), cat("A", "2025-03-01")]})
    items = dump_table(kpi_tables["CategoryKPI"], page_size=1)
    assert [(i["category"], i["order_date"]) for i in items] == [("A", "2025-03-01"), ("B", "2025-03-01"), ("B", "2025-03-02")]
    assert plain(items[0])["daily_revenue"] == 10.0


def test_plain_keeps_ints_as_ints_and_makes_fractions_floats() -> None:
    converted = plain({"n": Decimal("3"), "money": Decimal("49.50"), "rate": Decimal("1.0"), "xs": [Decimal("2")], "s": "x"})
    assert converted == {"n": 3, "money": 49.5, "rate": 1.0, "xs": [2], "s": "x"}
    assert isinstance(converted["n"], int) and isinstance(converted["rate"], float)


def test_check_numbers_accepts_dynamodb_types() -> None:
    check_numbers({"a": 1, "b": Decimal("1.5"), "c": "s", "d": True, "e": None, "f": [1, {"g": Decimal(0)}], "h": {"x"}})
    with pytest.raises(TypeError, match="not a DynamoDB type"):
        check_numbers({"a": object()})


# --------------------------------------------------------------------------------------------------
# Any table of pipeline.yaml: replace_periods by the table's shape


def shaped(dynamodb: Any, shape: TableShape, *, page_size: int | None = None) -> tuple[KpiTableStore, RecordingTable]:
    recording = RecordingTable(create_shape_table(dynamodb, shape))
    return KpiTableStore(recording, shape, page_size=page_size), recording


def test_replace_periods_on_the_hash_key_a_week_at_a_time(dynamodb: Any) -> None:
    shape = TableShape.of_key("WeeklyKPI", ["order_week"], period=("order_week", "week"))
    store, recording = shaped(dynamodb, shape)
    week = {"2025-03-03": [{"order_week": "2025-03-03", "top_price": Decimal("9.5")}], "2025-03-10": []}
    assert store.replace_periods(week) == ReplaceStats(put=1, deleted=0)
    assert store.replace_periods({"2025-03-03": []}) == ReplaceStats(put=0, deleted=1)
    assert all("IndexName" not in q and q["ConsistentRead"] for q in recording.queries)
    with pytest.raises(ValueError, match="filed under"):
        store.replace_periods({"2025-03-10": [{"order_week": "2025-03-03"}]})
    with pytest.raises(ValueError, match="'\\*' is for tables without a period"):
        store.replace_periods({"*": []})


def test_replace_periods_through_the_automatic_period_index(dynamodb: Any) -> None:
    shape = TableShape.of_key("BrandKPI", ["brand", "order_date"], period=("order_date", "day"))
    store, recording = shaped(dynamodb, shape, page_size=2)
    day = "2025-03-01"
    store.replace_periods({day: [{"brand": b, "order_date": day, "revenue": Decimal(1)} for b in "ABCDE"],
                           "2025-03-02": [{"brand": "A", "order_date": "2025-03-02", "revenue": Decimal(2)}]})
    recording.queries.clear()
    assert store.replace_periods({day: [{"brand": "C", "order_date": day, "revenue": Decimal(3)}]}) == ReplaceStats(1, 4)
    assert {q["IndexName"] for q in recording.queries} == {"order_date-index"} and len(recording.queries) >= 3
    assert store.dump() == [
        {"brand": "A", "order_date": "2025-03-02", "revenue": Decimal(2)},
        {"brand": "C", "order_date": day, "revenue": Decimal(3)},
    ]


def test_a_table_spanning_every_date_is_replaced_whole_and_keeps_numeric_keys(dynamodb: Any) -> None:
    shape = TableShape.of_key("UserKPI", ["user_id"], types={"user_id": "N"})
    store, _ = shaped(dynamodb, shape)
    store.replace_periods({"*": [{"user_id": Decimal(u), "orders": u} for u in (1, 2, 3)]})
    assert store.replace_periods({"*": [{"user_id": Decimal(2), "orders": 9}]}) == ReplaceStats(put=1, deleted=2)
    assert store.dump() == [{"user_id": Decimal(2), "orders": Decimal(9)}]
    assert store.get(user_id=Decimal(2)) == {"user_id": Decimal(2), "orders": Decimal(9)}
    with pytest.raises(ValueError, match="spans every date"):
        store.replace_periods({"2025-03-01": []})


def test_a_three_field_key_is_stored_with_its_joined_sort_key(dynamodb: Any) -> None:
    shape = TableShape.of_key("BrandDaily", ["brand", "category", "order_date"], period=("order_date", "day"))
    store, recording = shaped(dynamodb, shape)
    day = "2025-03-01"

    def item(brand: str, category: str, top: str) -> dict[str, Any]:
        return {"brand": brand, "category": category, "order_date": day, "top": Decimal(top)}

    store.replace_periods({day: [item("Acme", "Tops", "1"), item("Acme", "Jeans", "2"), item("Zed", "Tops", "3")]})
    raw = dynamodb.Table("BrandDaily").get_item(Key={"brand": "Acme", SORT_KEY: f"Tops#{day}"})["Item"]
    assert raw["top"] == Decimal(1)
    recording.queries.clear()
    assert store.replace_periods({day: [item("Acme", "Tops", "5")]}) == ReplaceStats(put=1, deleted=2)
    assert recording.queries[0]["IndexName"] == "order_date-index"
    assert store.dump() == [item("Acme", "Tops", "5")]  # `_sk` never leaves the store
    assert store.get(brand="Acme", category="Tops", order_date=day) == item("Acme", "Tops", "5")


def test_select_plans_the_read_from_the_keys_given(dynamodb: Any) -> None:
    shape = TableShape.of_key("BrandDaily", ["brand", "category", "order_date"], period=("order_date", "day"))
    store, recording = shaped(dynamodb, shape)
    rows = [("Acme", "Jeans", "2025-03-01"), ("Acme", "Tops", "2025-03-01"), ("Acme", "Tops", "2025-03-02"),
            ("Zed", "Tops", "2025-03-01")]
    by_day: dict[str, list[dict[str, Any]]] = {}
    for b, c, d in rows:
        by_day.setdefault(d, []).append({"brand": b, "category": c, "order_date": d, "n": 1})
    store.replace_periods(by_day)

    def keys(page: Any) -> list[tuple[str, str, str]]:
        return [(i["brand"], i["category"], i["order_date"]) for i in page.items]

    assert keys(store.select({"brand": "Acme", "category": "Tops"})) == rows[1:3]  # begins_with on `_sk`
    assert keys(store.select({"brand": "Acme", "category": "Tops"}, lower="2025-03-02")) == rows[2:3]
    assert keys(store.select({"brand": "Acme"}, lower="Jeans", upper="Jeans")) == rows[:1]  # bounds on key[1]
    recording.queries.clear()
    by_date = store.select({"order_date": "2025-03-01", "category": "Tops"})  # the period index, then a filter
    assert by_date.index == "order_date-index" and sorted(keys(by_date)) == [rows[1], rows[3]]
    first = store.select({"brand": "Acme"}, limit=2)
    assert len(first.items) == 2 and first.last_key is not None
    rest = store.select({"brand": "Acme"}, limit=2, start_key=first.last_key)
    assert keys(first) + keys(rest) == rows[:3]
    assert store.select({}).operation == "scan"
    with pytest.raises(QueryError, match="need"):
        store.select({}, lower="a")
    with pytest.raises(QueryError, match="the `next` of the same query"):
        store.select({"order_date": "2025-03-01"}, start_key=first.last_key)
