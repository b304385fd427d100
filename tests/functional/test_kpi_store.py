"""The DynamoDB KPI store on moto: replace-a-date semantics, GSI use, Decimal-only, <= 25-item batches, reads."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.kpi_store import (
    KpiStore,
    KpiTableStore,
    RangeTooLongError,
    check_numbers,
    days_between,
    dump_table,
    plain,
)


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
    return KpiStore(dynamodb)


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
    store = KpiStore(dynamodb, order_table="OrderKPI", category_table="CategoryKPI")
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
