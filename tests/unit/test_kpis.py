"""Every metric kind on small in-memory rows: KpiPlan compiled from a config string, DateAggregator over rows."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from chalicelib.config import PipelineConfig, parse_config
from kpipe.engine.keys import IntColumn
from kpipe.engine.kpis import DateAggregator, Distinct, KpiPlan, _buckets, finish_number

SALES_YAML = """
datasets:
  sales:
    files: sales/*.csv
    key: id
    columns:
      id: {type: int, required: true}
      day: {type: datetime, required: true}
      shop: {type: string, required: true}
      amount: {type: decimal, required: true}
      qty: {type: int, default: 1}
      customer: {type: int}
      kind: {type: string}
    derived:
      d: {date_of: day}
      value: {multiply: [amount, qty]}
      is_gift: {equals: {field: kind, value: gift, ignore_case: true}}
    partition_by: d
kpis:
  Daily:
    key: [d]
    metrics:
      revenue: {sum: value, from: sales, round: 2}
      units: {sum: qty, from: sales}
      sales: {count: id, from: sales}
      customers: {count_distinct: customer, from: sales}
      cheapest: {min: amount, from: sales}
      dearest: {max: amount, from: sales}
      big_sales: {count: id, from: sales, where: [{field: amount, ge: 10}]}
      big_gifts: {count: id, from: sales, where: [{field: amount, ge: 10}, {field: is_gift, eq: true}]}
      shop_ab: {count: id, from: sales, where: [{field: shop, one_of: [A, b], ignore_case: true}]}
      gift_count: {count: id, from: sales, where: [{field: is_gift, eq: true}], store: false}
      gift_share: {ratio: [gift_count, sales], round: 4}
      avg_sale: {ratio: [revenue, sales], round: 2}
      nothing: {count: id, from: sales, where: [{field: kind, eq: no-such-kind}], store: false}
      per_nothing: {ratio: [revenue, nothing], round: 2}
  ByShop:
    key: [shop, d]
    metrics:
      shop_revenue: {sum: value, from: sales, round: 2}
      shop_units: {sum: qty, from: sales}
"""

DAY = "2025-03-01"


@pytest.fixture(scope="module")
def sales_cfg() -> PipelineConfig:
    return parse_config(SALES_YAML)


@pytest.fixture(scope="module")
def plan(sales_cfg: PipelineConfig) -> KpiPlan:
    return KpiPlan.compile(sales_cfg)


def sale(sid: int, amount: str, qty: int = 1, shop: str = "A", customer: int | None = None, kind: str | None = None,
         day: str = DAY) -> dict[str, Any]:
    return {"id": sid, "d": day, "shop": shop, "amount": Decimal(amount), "qty": qty,
            "value": Decimal(amount) * qty, "customer": customer, "kind": kind,
            "is_gift": (kind or "").lower() == "gift"}


def rows_for(plan: KpiPlan, dataset: str, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Typed tuples in the order the plan reads fields (what the transform hands the aggregator)."""
    return [tuple(row[f] for f in plan.fields[dataset]) for row in rows]


def feed(agg: DateAggregator, dataset: str, rows: list[tuple[Any, ...]]) -> None:
    """Hand typed rows to the aggregator (`add_rows` takes rows; `add` takes value columns)."""
    agg.add_rows(dataset, rows)


def aggregate(plan: KpiPlan, **datasets: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    agg = DateAggregator(plan)
    for name, rows in datasets.items():
        feed(agg, name, rows_for(plan, name, rows))
    return agg.items()


def only(items: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(items) == 1, items
    return items[0]


def test_plan_reads_only_the_fields_it_needs(plan: KpiPlan) -> None:
    assert set(plan.fields) == {"sales"}
    assert set(plan.fields["sales"]) == {"d", "shop", "value", "qty", "id", "customer", "amount", "is_gift", "kind"}
    assert [t.name for t in plan.tables] == ["Daily", "ByShop"]


def test_sum_count_count_distinct_min_max(plan: KpiPlan) -> None:
    rows = [sale(1, "9.99", 2, customer=7), sale(2, "10.00", 1, customer=7), sale(3, "0.01", 5, customer=8),
            sale(4, "25.50", 1, customer=None)]
    item = only(aggregate(plan, sales=rows)["Daily"])
    assert item["d"] == DAY
    assert item["revenue"] == Decimal("55.53")  # 19.98 + 10.00 + 0.05 + 25.50, exact decimal arithmetic
    assert item["units"] == 9 and type(item["units"]) is int
    assert item["sales"] == 4 and type(item["sales"]) is int
    assert item["customers"] == 2  # distinct non-null customers
    assert item["cheapest"] == Decimal("0.01")
    assert item["dearest"] == Decimal("25.50")


def test_where_filters_and_all_conditions_must_hold(plan: KpiPlan) -> None:
    rows = [sale(1, "10", kind="gift"), sale(2, "10", kind="GIFT", shop="b"), sale(3, "9.99", kind="gift"),
            sale(4, "50"), sale(5, "1", shop="C")]
    item = only(aggregate(plan, sales=rows)["Daily"])
    assert item["big_sales"] == 3  # 10, 10, 50: `ge` is inclusive
    assert item["big_gifts"] == 2  # amount >= 10 AND a gift (ignore_case)
    assert item["shop_ab"] == 4  # one_of with ignore_case: A, b, A, A; not C
    assert item["gift_share"] == Decimal("0.6000")


def test_ratio_of_two_metrics(plan: KpiPlan) -> None:
    item = only(aggregate(plan, sales=[sale(1, "10"), sale(2, "20"), sale(3, "30.01")])["Daily"])
    assert item["avg_sale"] == Decimal("20.00")  # 60.01 / 3 = 20.0033...
    assert str(item["avg_sale"]) == "20.00"


def test_ratio_with_zero_denominator_is_zero(plan: KpiPlan) -> None:
    item = only(aggregate(plan, sales=[sale(1, "10")])["Daily"])
    assert item["per_nothing"] == 0
    assert isinstance(item["per_nothing"], Decimal)


def test_ratio_uses_unrounded_inputs(plan: KpiPlan) -> None:
    # revenue 0.0180 is stored as 0.02, but the average is 0.0180 / 4 = 0.0045 -> 0.00 (not 0.02 / 4 -> 0.01)
    item = only(aggregate(plan, sales=[sale(i, "0.0045") for i in range(4)])["Daily"])
    assert item["revenue"] == Decimal("0.02")
    assert item["avg_sale"] == Decimal("0.00")


@pytest.mark.parametrize(("amount", "stored"), [("0.125", "0.13"), ("2.675", "2.68"), ("0.135", "0.14"),
                                                ("1.005", "1.01"), ("0.124999", "0.12"), ("-0.125", "-0.13")])
def test_money_rounds_half_up_not_to_even(plan: KpiPlan, amount: str, stored: str) -> None:
    item = only(aggregate(plan, sales=[sale(1, amount)])["Daily"])
    assert str(item["revenue"]) == stored


def test_rates_round_half_up_to_4_places(plan: KpiPlan) -> None:
    # 1 gift of 3 sales: 0.33333 -> 0.3333; 2 of 3: 0.66667 -> 0.6667
    one = only(aggregate(plan, sales=[sale(1, "1", kind="gift"), sale(2, "1"), sale(3, "1")])["Daily"])
    two = only(aggregate(plan, sales=[sale(1, "1", kind="gift"), sale(2, "1", kind="gift"), sale(3, "1")])["Daily"])
    assert (str(one["gift_share"]), str(two["gift_share"])) == ("0.3333", "0.6667")
    # 1 of 8 = 0.125 exactly; 1 of 16 = 0.0625; 1 of 32 = 0.03125 -> half-up 0.0313
    rows = [sale(1, "1", kind="gift"), *(sale(i, "1") for i in range(2, 33))]
    assert str(only(aggregate(plan, sales=rows)["Daily"])["gift_share"]) == "0.0313"


def test_finish_number() -> None:
    assert finish_number(Decimal("49.505"), 2) == Decimal("49.51")
    assert finish_number(Decimal("0.00005"), 4) == Decimal("0.0001")
    assert finish_number(3, None) == 3
    assert finish_number(None, 2) is None


def test_store_false_metrics_are_not_stored(plan: KpiPlan) -> None:
    item = only(aggregate(plan, sales=[sale(1, "10", kind="gift")])["Daily"])
    assert "gift_count" not in item and "nothing" not in item
    assert set(item) == {"d", "revenue", "units", "sales", "customers", "cheapest", "dearest", "big_sales",
                         "big_gifts", "shop_ab", "gift_share", "avg_sale", "per_nothing"}


def test_two_key_table_groups_by_both_fields(plan: KpiPlan) -> None:
    rows = [sale(1, "10", 2, shop="A"), sale(2, "1.50", 1, shop="B"), sale(3, "0.25", 4, shop="A")]
    by_shop = aggregate(plan, sales=rows)["ByShop"]
    assert by_shop == [
        {"shop": "A", "d": DAY, "shop_revenue": Decimal("21.00"), "shop_units": 6},
        {"shop": "B", "d": DAY, "shop_revenue": Decimal("1.50"), "shop_units": 1},
    ]


def test_rows_added_in_chunks_equal_rows_added_at_once(plan: KpiPlan) -> None:
    rows = [sale(i, f"{i}.{i:02d}", i % 3 + 1, shop="AB"[i % 2], customer=i % 4, kind=("gift", None)[i % 2])
            for i in range(1, 20)]
    at_once = aggregate(plan, sales=rows)
    agg = DateAggregator(plan)
    for chunk in (rows[:5], rows[5:6], rows[6:]):
        feed(agg, "sales", rows_for(plan, "sales", chunk))
    assert agg.items() == at_once


def test_no_rows_no_items(plan: KpiPlan) -> None:
    assert aggregate(plan, sales=[]) == {"Daily": [], "ByShop": []}


def test_rows_and_columns_feed_the_same(plan: KpiPlan) -> None:
    rows = rows_for(plan, "sales", [sale(1, "10", 2, customer=3), sale(2, "0.5", shop="B", kind="gift")])
    by_rows, by_cols = DateAggregator(plan), DateAggregator(plan)
    by_rows.add_rows("sales", rows)
    by_cols.add("sales", [list(col) for col in zip(*rows, strict=True)])
    assert by_rows.items() == by_cols.items()


def test_int_columns_marked_as_such_feed_the_same(plan: KpiPlan) -> None:
    """The transform hands id and count fields over as `IntColumn`s, which lets count_distinct skip its
    per-value type check: the items are those of plain lists, nulls and groups included."""
    rows = rows_for(plan, "sales", [sale(i, f"{i}.5", i % 3 + 1, shop="AB"[i % 2], customer=(i % 4 or None)) for i in range(1, 30)])
    plain, marked = DateAggregator(plan), DateAggregator(plan)
    cols = [list(col) for col in zip(*rows, strict=True)]
    plain.add("sales", cols)
    marked.add("sales", [IntColumn(col) if all(type(v) is int for v in col) else col for col in cols])
    assert any(all(type(v) is int for v in col) for col in cols)
    assert marked.items() == plain.items()


def test_stored_numbers_are_decimal_or_int_never_float(plan: KpiPlan) -> None:
    rows = [sale(1, "10.10", 3, customer=1, kind="gift"), sale(2, "0.3", shop="B")]
    for items in aggregate(plan, sales=rows).values():
        for item in items:
            for name, value in item.items():
                assert isinstance(value, Decimal | int | str) and not isinstance(value, float | bool), (name, value)


# ------------------------------------------------------------------------------------------------ default pipeline


def test_default_category_kpis_count_orders_not_items(cfg: PipelineConfig) -> None:
    """avg_order_value divides by distinct orders holding the category; avg_return_rate counts an order once
    when it has at least one returned item of that category."""
    plan = KpiPlan.compile(cfg)
    orders = [{"order_id": 1, "user_id": 7, "order_date": DAY, "is_returned": False},
              {"order_id": 2, "user_id": 7, "order_date": DAY, "is_returned": True},
              {"order_id": 3, "user_id": 9, "order_date": DAY, "is_returned": False}]

    def it(iid: int, oid: int, cat: str, price: str, qty: int = 1, returned: bool = False) -> dict[str, Any]:
        return {"id": iid, "order_id": oid, "category": cat, "order_date": DAY, "quantity": qty,
                "revenue": Decimal(price) * qty, "is_returned": returned, "sale_price": Decimal(price)}

    items = [it(1, 1, "Books", "10.00", 2, returned=True), it(2, 1, "Books", "5.00", returned=True),
             it(3, 2, "Books", "7.00"), it(4, 2, "Toys", "3.33", 3), it(5, 3, "Toys", "1.00", returned=True)]
    out = aggregate(plan, orders=orders, order_items=items)
    assert only(out["OrderKPI"]) == {"order_date": DAY, "total_orders": 3, "total_revenue": Decimal("42.99"),
                                     "total_items_sold": 8, "return_rate": Decimal("0.3333"),
                                     "unique_customers": 2}
    assert out["CategoryKPI"] == [
        {"category": "Books", "order_date": DAY, "daily_revenue": Decimal("32.00"),
         "avg_order_value": Decimal("16.00"), "avg_return_rate": Decimal("0.5000")},
        {"category": "Toys", "order_date": DAY, "daily_revenue": Decimal("10.99"),
         "avg_order_value": Decimal("5.50"), "avg_return_rate": Decimal("0.5000")},
    ]


@pytest.mark.parametrize(
    "key_cols",
    [
        [["d1", "d1", "d1"]],  # constant: one bucket, every row
        [["a", "b", "a"], ["d1", "d1", "d1"]],  # the usual recompute: category varies, date does not
        [["d1", "d1", "d1"], ["a", None, "a"]],  # the varying column second, with a null
        [["a", "b", "a"], ["d1", "d2", "d1"]],  # both vary
    ],
)
def test_buckets_equal_a_plain_group_by(key_cols: list[list[Any]]) -> None:
    expected: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(zip(*key_cols, strict=True)):
        expected.setdefault(key, []).append(i)
    got = _buckets(key_cols)
    assert {k: (v if v is not None else list(range(len(key_cols[0])))) for k, v in got.items()} == expected


@pytest.mark.parametrize(
    "batches",
    [
        [[1, 2, 2], [3, 1]],  # ids: the compact array
        [["a", "b"], ["a"]],  # text: a set
        [[1, 2], [2**70, 3]],  # an id beyond 64 bits moves everything to the set
        [[1, 2], ["x", 1]],  # a type change mid-way (cannot come from one typed field, still exact)
        [[True, False], [True]],  # flags are not ids
        [[Decimal("1.0"), Decimal("1")], [Decimal("2")]],
        [[], []],
    ],
)
def test_distinct_counts_what_a_set_counts(batches: list[list[Any]]) -> None:
    acc = Distinct()
    for values in batches:
        acc.update(values)
    assert len(acc) == len({v for values in batches for v in values})


@pytest.mark.parametrize("batches", [[[1, 2, 2], [3, 1]], [[1, 2], [2**70, 3]], [[-(2**63)], [2**63 - 1, 5]]])
def test_distinct_told_the_values_are_ints_counts_what_a_set_counts(batches: list[list[int]]) -> None:
    acc = Distinct()
    for values in batches:
        acc.update(values, ints=True)
    assert len(acc) == len({v for values in batches for v in values})
