"""The oracle is only worth trusting if it reproduces the spec's own worked example to the cent."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.oracle import Invalid, oracle, parse_datetime_date, parse_decimal, parse_int

PRODUCTS = "id,sku,cost,category,name,brand,retail_price,department\n"
ORDERS = "order_id,user_id,status,created_at,returned_at,shipped_at,delivered_at,num_of_item\n"
ITEMS = ("id,order_id,user_id,product_id,status,created_at,shipped_at,delivered_at,returned_at,sale_price,"
         "quantity\n")


def write_batch(root: Path, name: str, products: str, orders: dict[str, str], items: dict[str, str]) -> Path:
    d = root / name
    (d / "orders").mkdir(parents=True)
    (d / "order_items").mkdir()
    (d / "products.csv").write_text(products, encoding="utf-8")
    for fname, text in orders.items():
        (d / "orders" / fname).write_text(text, encoding="utf-8")
    for fname, text in items.items():
        (d / "order_items" / fname).write_text(text, encoding="utf-8")
    return d


def worked_example(root: Path) -> Path:
    return write_batch(
        root, "b1",
        PRODUCTS + "1,S1,5,Books,A book,X,10.00,D\n2,S2,9,Toys,A toy,Y,20.00,D\n",
        {"part-1.csv": ORDERS + "1,7,Returned,2025-03-01T10:00:00,,,,2\n"
                                "2,7,Delivered,2025-03-01T23:00:00-02:00,,,,1\n"},
        {"part-1.csv": ITEMS + "1,1,7,1,Returned,,,,,9.50,\n"
                               "2,1,7,2,Delivered,,,,,20.00,2\n"
                               "3,2,7,1,,,,,,10.00,\n"},
    )


def D(s: str) -> Decimal:
    return Decimal(s)


def test_worked_example_gives_the_spec_numbers(tmp_path: Path) -> None:
    res = oracle([worked_example(tmp_path)])
    assert res.order_kpi == {
        "2025-03-01": {"total_orders": D("1"), "total_revenue": D("49.50"), "total_items_sold": D("3"),
                       "return_rate": D("1.0"), "unique_customers": D("1")},
        "2025-03-02": {"total_orders": D("1"), "total_revenue": D("10.00"), "total_items_sold": D("1"),
                       "return_rate": D("0.0"), "unique_customers": D("1")},
    }
    assert res.category_kpi == {
        ("Books", "2025-03-01"): {"daily_revenue": D("9.50"), "avg_order_value": D("9.50"),
                                  "avg_return_rate": D("1.0")},
        ("Toys", "2025-03-01"): {"daily_revenue": D("40.00"), "avg_order_value": D("40.00"),
                                 "avg_return_rate": D("0.0")},
        ("Books", "2025-03-02"): {"daily_revenue": D("10.00"), "avg_order_value": D("10.00"),
                                  "avg_return_rate": D("0.0")},
    }
    # Stored precision, not just numeric equality.
    assert str(res.order_kpi["2025-03-01"]["total_revenue"]) == "49.50"
    assert str(res.order_kpi["2025-03-01"]["return_rate"]) == "1.0000"
    assert res.reports == [{ds: {"rows_in": n, "rows_valid": n, "rows_rejected": 0}
                            for ds, n in (("products", 2), ("orders", 2), ("order_items", 3))}]


def test_timezone_moves_the_offset_order_back(tmp_path: Path) -> None:
    # In America/Sao_Paulo (-03:00) 2025-03-01T23:00-02:00 is 22:00 on the 1st; both orders share a date,
    # while naive 10:00 is already local.
    res = oracle([worked_example(tmp_path)], tz="America/Sao_Paulo")
    assert list(res.order_kpi) == ["2025-03-01"]
    assert res.order_kpi["2025-03-01"]["total_orders"] == 2
    assert res.order_kpi["2025-03-01"]["total_revenue"] == D("59.50")
    assert res.order_kpi["2025-03-01"]["return_rate"] == D("0.5")
    assert res.order_kpi["2025-03-01"]["unique_customers"] == 1


def test_same_batch_twice_counts_once(tmp_path: Path) -> None:
    b = worked_example(tmp_path)
    once, twice = oracle([b]), oracle([b, b])
    assert twice.order_kpi == once.order_kpi
    assert twice.category_kpi == once.category_kpi
    assert twice.reports == once.reports * 2


def test_moved_order_takes_items_not_resent_and_new_catalog_applies_to_resent_items(tmp_path: Path) -> None:
    b1 = worked_example(tmp_path)
    # Batch 2: order 1 corrected to 2025-03-05; only item 2 is re-sent (re-priced), and this batch's
    # catalog now calls product 2 "Games". Item 1 (not re-sent) must follow its order to the 5th and keep
    # its batch-1 category.
    b2 = write_batch(
        tmp_path, "b2",
        PRODUCTS + "1,S1,5,Books,A book,X,10.00,D\n2,S2,9,Games,A toy,Y,20.00,D\n",
        {"part-1.csv": ORDERS + "1,7,Returned,2025-03-05 08:00:00Z,,,,2\n"},
        {"part-1.csv": ITEMS + "2,1,7,2,Delivered,,,,,15.00,2\n"},
    )
    res = oracle([b1, b2])
    assert "2025-03-01" not in res.order_kpi
    assert res.order_kpi["2025-03-05"] == {
        "total_orders": D("1"), "total_revenue": D("39.50"), "total_items_sold": D("3"),
        "return_rate": D("1"), "unique_customers": D("1"),
    }
    assert res.order_kpi["2025-03-02"]["total_revenue"] == D("10.00")
    assert set(res.category_kpi) == {("Books", "2025-03-05"), ("Games", "2025-03-05"), ("Books", "2025-03-02")}
    assert res.category_kpi[("Books", "2025-03-05")]["daily_revenue"] == D("9.50")
    assert res.category_kpi[("Games", "2025-03-05")]["daily_revenue"] == D("30.00")
    assert res.category_kpi[("Games", "2025-03-05")]["avg_return_rate"] == 0
    # Invariant: per date, category revenue adds up to the order revenue.
    for day, kpi in res.order_kpi.items():
        cats = sum(v["daily_revenue"] for (_c, d), v in res.category_kpi.items() if d == day)
        assert cats == kpi["total_revenue"]


def test_rejections_cascade_and_count_per_dataset(tmp_path: Path) -> None:
    b = write_batch(
        tmp_path, "b",
        "\ufeff" + PRODUCTS.replace("\n", "\r\n")
        + '1,S1,5,Books,"Big ""Red"", Book",X,10.00,D\r\n'
        + "2,S2,9,Toys,toy,Y,0,D\r\n"          # price 0 -> rejected
        + "1,S1,5,Toys,dup,X,10.00,D\r\n",     # later duplicate -> rejected
        {
            "b.csv": ORDERS + "2,8,Complete,2025-13-45 10:00:00,,,,1\n",  # impossible date
            "a.csv": "created_at,order_id,user_id,extra\n2025-03-01 10:00:00.123+00:00,1,7,x\n"
                     "2025-03-01 11:00:00,3,7.0,x\n",                       # non-int user
            "c.csv": "order_id,user_id\n9,9\n",                             # lacks created_at
            "d.csv": ORDERS,                                                # header only
        },
        {"part-1.csv": ITEMS
         + "1,1,7,1,,,,,,9.50,\n"      # valid
         + "2,2,7,1,,,,,,9.50,\n"      # order 2 rejected -> cascade
         + "3,1,7,2,,,,,,9.50,\n"      # product 2 rejected -> cascade
         + "4,1,7,1,,,,,,1e3,\n"       # exponent
         + "5,1,7,1,,,,,,NaN,\n"
         + "6,1,7,1,,,,,,.5,0\n"       # quantity 0
         + "7,1,7,1,,,,,,.5,1.0\n"     # quantity not int
         + "1,1,7,1,,,,,,9.50,\n"      # duplicate of accepted item 1
         + "8,1,7,1,,,,,,.5, \n"},     # null quantity -> 1, valid
    )
    with (b / "order_items" / "part-2.csv").open("wb") as fh:
        fh.write(ITEMS.encode() + b"9,1,7,1,Compl\xe9te,,,,,1.00,\n10,1,7,1,,,,,,2.00,\n")
    res = oracle([b])
    assert res.reports == [{
        "products": {"rows_in": 3, "rows_valid": 1, "rows_rejected": 2},
        "orders": {"rows_in": 4, "rows_valid": 1, "rows_rejected": 3},
        "order_items": {"rows_in": 11, "rows_valid": 3, "rows_rejected": 8},
    }]
    assert res.order_kpi["2025-03-01"]["total_revenue"] == D("12.00")
    assert res.order_kpi["2025-03-01"]["total_items_sold"] == 3


def test_a_later_duplicate_is_rejected_even_when_the_first_row_was(tmp_path: Path) -> None:
    # Literal reading of "unique in the batch (a later duplicate row is rejected)": the key is taken by
    # the first row that carries it, valid or not. Rows out before their fields are read (a file lacking
    # a required column, undecodable bytes) take no key.
    b = write_batch(
        tmp_path, "b",
        PRODUCTS + "1,S,1,Books,n,X,0,D\n1,S,1,Books,n,X,10.00,D\n2,S,1,Toys,n,X,5.00,D\n",
        {"a.csv": ORDERS + "1,7,Complete,2025-03-01 10:00:00,,,,1\n"},
        {"a.csv": "id,order_id,product_id\n5,1,2\n",                    # lacks sale_price: takes no key
         "b.csv": ITEMS + "5,1,7,2,,,,,,5.00,\n"                       # so this one is valid
                          "6,1,7,2,,,,,,NaN,\n6,1,7,2,,,,,,5.00,\n"},  # the 2nd 6 is a duplicate
    )
    with (b / "order_items" / "c.csv").open("wb") as fh:
        fh.write(ITEMS.encode() + b"7,1,7,2,\xff,,,,,1.00,\n7,1,7,2,,,,,,2.00,\n")
    res = oracle([b])
    assert res.reports[0]["products"] == {"rows_in": 3, "rows_valid": 1, "rows_rejected": 2}
    assert res.reasons[0]["products"] == {"retail_price: not > 0": 1, "id: duplicate": 1}
    assert res.reports[0]["order_items"] == {"rows_in": 6, "rows_valid": 2, "rows_rejected": 4}
    assert res.reasons[0]["order_items"] == {
        "file lacks required column sale_price": 1, "sale_price: not a decimal": 1, "id: duplicate": 1,
        "row is not UTF-8": 1,
    }
    assert res.order_kpi["2025-03-01"]["total_revenue"] == D("7.00")


@pytest.mark.parametrize("text", ["12", "-3", "+4", "007"])
def test_ints(text: str) -> None:
    assert parse_int(text) == int(text)


@pytest.mark.parametrize("text", ["12.0", "1e3", "x5", "", None, "1 2", "١٢"])
def test_not_ints(text: str | None) -> None:
    with pytest.raises(Invalid):
        parse_int(text)


@pytest.mark.parametrize("text", ["12", "12.5", ".5", "-0.25", "+3"])
def test_decimals(text: str) -> None:
    assert parse_decimal(text) == Decimal(text)


@pytest.mark.parametrize("text", ["1e3", "NaN", "inf", "-Infinity", "1.2.3", "12.", "", "1,5"])
def test_not_decimals(text: str) -> None:
    with pytest.raises(Invalid):
        parse_decimal(text)


@pytest.mark.parametrize(("text", "day"), [
    ("2025-03-30T16:14:26", "2025-03-30"),
    ("2025-03-30 16:14:26.5", "2025-03-30"),
    ("2025-03-30T23:14:26-02:00", "2025-03-31"),
    ("2025-03-31T01:00:00+05:30", "2025-03-30"),
    ("2025-03-30T23:59:59Z", "2025-03-30"),
])
def test_datetimes(text: str, day: str) -> None:
    assert parse_datetime_date(text, ZoneInfo("UTC")).isoformat() == day


@pytest.mark.parametrize("text", ["2025-13-45 10:00:00", "2025-02-29T00:00:00", "2025-03-30", "yesterday",
                                  "2025-03-30T24:00:00", "2025-03-30T10:00:00+25:00"])
def test_not_datetimes(text: str) -> None:
    with pytest.raises(Invalid):
        parse_datetime_date(text, ZoneInfo("UTC"))
