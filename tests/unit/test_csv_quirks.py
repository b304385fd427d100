"""Every CSV quirk docs/semantics.md allows, through validate_batch (and process_batches against the oracle)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import PipelineConfig, parse_config
from kpipe.engine import validate as validate_module
from kpipe.engine.validate import validate_batch
from kpipe.process import process_batches
from tests.oracle import oracle
from tests.support import read_valid


@pytest.fixture(params=["duckdb", "petl"])
def cfg(request: pytest.FixtureRequest, config_text: str) -> PipelineConfig:
    """Every test here runs on both executors: the default config with `engine.executor` set."""
    base = parse_config(config_text)
    return base.model_copy(update={"engine": base.engine.model_copy(update={"executor": request.param})})


PRODUCTS = "id,sku,cost,category,name,brand,retail_price,department\n1,S1,5,Books,Book,X,10.00,D\n2,S2,9,Toys,Toy,Y,20.00,D\n"
ORDERS_HEADER = "order_id,user_id,status,created_at,returned_at,shipped_at,delivered_at,num_of_item\n"
ITEMS_HEADER = "id,order_id,user_id,product_id,status,created_at,shipped_at,delivered_at,returned_at,sale_price\n"
ORDERS = ORDERS_HEADER + "1,7,Complete,2025-03-01T10:00:00,,,,1\n2,8,Returned,2025-03-02T10:00:00,,,,1\n"
ITEMS = ITEMS_HEADER + "1,1,7,1,Complete,,,,,9.50\n2,2,8,2,Returned,,,,,20.00\n"


def read_bytes_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def validate(tmp_path: Path, cfg: PipelineConfig, write_batch: Any) -> Any:
    """validate(products=..., orders=..., items=...) -> (report, valid rows, rejected rows)."""
    def go(products: Any = PRODUCTS, orders: Any = ORDERS, items: Any = ITEMS) -> tuple[dict[str, Any], Any, Any]:
        raw = write_batch(tmp_path / "raw", products, orders, items)
        report = validate_batch(cfg, raw, tmp_path / "out", "b-quirks")
        valid = {ds: read_valid(tmp_path / "out" / "validated" / f"{ds}.parquet") for ds in cfg.datasets}
        rejected = {ds: read_bytes_csv(tmp_path / "out" / "rejected" / f"{ds}.csv") for ds in cfg.datasets}
        for ds, stats in report["datasets"].items():
            assert stats["rows_in"] == stats["rows_valid"] + stats["rows_rejected"], ds
            assert stats["rows_valid"] == len(valid[ds]) and stats["rows_rejected"] == len(rejected[ds]), ds
            assert sum(stats["reasons"].values()) >= stats["rows_rejected"]
        return report, valid, rejected
    return go


def counts(report: dict[str, Any], ds: str) -> tuple[int, int, int]:
    s = report["datasets"][ds]
    return s["rows_in"], s["rows_valid"], s["rows_rejected"]


def test_clean_baseline(validate: Any) -> None:
    report, valid, _ = validate()
    assert [counts(report, ds) for ds in ("products", "orders", "order_items")] == [(2, 2, 0)] * 3
    assert [i["category"] for i in valid["order_items"]] == ["Books", "Toys"]


def test_utf8_byte_order_mark(validate: Any) -> None:
    bom = "\ufeff"
    report, valid, _ = validate(bom + PRODUCTS, {"a.csv": bom + ORDERS}, {"a.csv": bom + ITEMS})
    assert [counts(report, ds) for ds in ("products", "orders", "order_items")] == [(2, 2, 0)] * 3
    assert [p["id"] for p in valid["products"]] == ["1", "2"]  # the first column is found despite the BOM


def test_crlf_line_ends(validate: Any) -> None:
    def crlf(text: str) -> bytes:
        return text.replace("\n", "\r\n").encode()
    report, valid, _ = validate(crlf(PRODUCTS), {"a.csv": crlf(ORDERS)}, {"a.csv": crlf(ITEMS)})
    assert [counts(report, ds) for ds in ("products", "orders", "order_items")] == [(2, 2, 0)] * 3
    assert valid["order_items"][1]["sale_price"] == "20.00"  # no stray \r in the last column
    assert valid["products"][1]["retail_price"] == "20.00"


def test_quoted_commas_and_quotes(validate: Any) -> None:
    products = ("id,sku,cost,category,name,brand,retail_price,department\n"
                '1,S1,5,"Books, Rare","The ""Best"" Book, vol. 1","Levi\'s",10.00,D\n'
                '2,S2,9,"Toys ""R"" Fun",Toy,Y,"20.00",D\n')
    orders = ORDERS_HEADER + '1,7,"Complete",2025-03-01T10:00:00,,,,1\n2,8,"Returned",2025-03-02T10:00:00,,,,"1"\n'
    report, valid, _ = validate(products, orders)
    assert counts(report, "products") == (2, 2, 0)
    assert [p["category"] for p in valid["products"]] == ["Books, Rare", 'Toys "R" Fun']
    assert [i["category"] for i in valid["order_items"]] == ["Books, Rare", 'Toys "R" Fun']


def test_columns_in_any_order(validate: Any) -> None:
    products = "retail_price,category,id\n10.00,Books,1\n20.00,Toys,2\n"
    orders = "created_at,status,user_id,order_id\n2025-03-01T10:00:00,Complete,7,1\n2025-03-02T10:00:00,Returned,8,2\n"
    items = "sale_price,product_id,order_id,id\n9.50,1,1,1\n20.00,2,2,2\n"
    report, valid, _ = validate(products, orders, items)
    assert [counts(report, ds) for ds in ("products", "orders", "order_items")] == [(2, 2, 0)] * 3
    assert [(o["order_id"], o["user_id"], o["order_date"]) for o in valid["orders"]] == [
        ("1", "7", "2025-03-01"), ("2", "8", "2025-03-02")]
    assert [(i["id"], i["revenue"], i["category"]) for i in valid["order_items"]] == [
        ("1", "9.50", "Books"), ("2", "20.00", "Toys")]


def test_extra_columns_are_ignored(validate: Any) -> None:
    orders = ("coupon,order_id,user_id,status,created_at,gift_note\n"
              "SAVE10,1,7,Complete,2025-03-01T10:00:00,hi\n,2,8,Returned,2025-03-02T10:00:00,\n")
    report, valid, _ = validate(orders=orders)
    assert counts(report, "orders") == (2, 2, 0)
    assert "coupon" not in valid["orders"][0] and "gift_note" not in valid["orders"][0]


def test_header_names_are_stripped(validate: Any) -> None:
    orders = " order_id , user_id ,status, created_at \n1,7,Complete,2025-03-01T10:00:00\n2,8,,2025-03-02T10:00:00\n"
    report, _, _ = validate(orders=orders)
    assert counts(report, "orders") == (2, 2, 0)


def test_header_only_file(validate: Any) -> None:
    report, _, _ = validate(orders={"a.csv": ORDERS, "b.csv": ORDERS_HEADER})
    assert counts(report, "orders") == (2, 2, 0)
    assert report["files"]["orders/b.csv"] == {"rows_in": 0, "rows_valid": 0, "rows_rejected": 0}


def test_empty_zero_byte_file(validate: Any) -> None:
    report, _, _ = validate(orders={"a.csv": ORDERS, "b.csv": b""}, items={"a.csv": ITEMS, "z.csv": b""})
    assert counts(report, "orders") == (2, 2, 0)
    assert counts(report, "order_items") == (2, 2, 0)


def test_blank_lines_are_not_rows(validate: Any) -> None:
    orders = ORDERS_HEADER + "\n1,7,Complete,2025-03-01T10:00:00,,,,1\n\n\n2,8,Returned,not-a-date,,,,1\n\n"
    report, valid, rejected = validate(orders=orders)
    assert counts(report, "orders") == (2, 1, 1)
    assert rejected["orders"][0]["_line"] == "6"  # the physical line of the row in the file
    assert [o["order_id"] for o in valid["orders"]] == ["1"]


def test_header_then_only_blank_lines(validate: Any) -> None:
    report, _, _ = validate(orders={"a.csv": ORDERS, "b.csv": ORDERS_HEADER + "\n\n"})
    assert counts(report, "orders") == (2, 2, 0)
    assert report["files"]["orders/b.csv"]["rows_in"] == 0


def test_short_rows(validate: Any) -> None:
    # row 1 stops after created_at (the optional columns are simply absent);
    # row 2 stops before created_at (a required value is missing)
    orders = ORDERS_HEADER + "1,7,Complete,2025-03-01T10:00:00\n2,8\n"
    report, valid, rejected = validate(orders=orders)
    assert counts(report, "orders") == (2, 1, 1)
    assert valid["orders"][0]["order_id"] == "1"
    assert rejected["orders"][0]["_reasons"] == "created_at.required"
    assert (rejected["orders"][0]["order_id"], rejected["orders"][0]["created_at"]) == ("2", "")


def test_long_rows_keep_the_declared_columns(validate: Any) -> None:
    orders = ORDERS_HEADER + "1,7,Complete,2025-03-01T10:00:00,,,,1,surplus,values\n"
    report, valid, _ = validate(orders=orders)
    assert counts(report, "orders") == (1, 1, 0)
    assert valid["orders"][0]["created_at"].startswith("2025-03-01T10:00:00")


def test_non_utf8_row_is_rejected_alone_and_kept_byte_for_byte(tmp_path: Path, validate: Any) -> None:
    bad_line = b"2,8,Retourn\xe9,2025-03-02T10:00:00,,,,1"
    orders = ORDERS_HEADER.encode() + b"1,7,Complete,2025-03-01T10:00:00,,,,1\n" + bad_line + b"\n" + (
        "3,9,Café,2025-03-03T10:00:00,,,,1\n".encode())
    report, valid, rejected = validate(orders={"a.csv": orders})
    assert counts(report, "orders") == (3, 2, 1)
    assert report["datasets"]["orders"]["reasons"] == {"row.encoding": 1}
    assert [o["order_id"] for o in valid["orders"]] == ["1", "3"]
    assert valid["orders"][1]["status"] == "Café"  # valid UTF-8 beyond ASCII is fine
    row = rejected["orders"][0]
    assert (row["_file"], row["_line"], row["_reasons"]) == ("orders/a.csv", "3", "row.encoding")
    raw = (tmp_path / "out" / "rejected" / "orders.csv").read_bytes()
    assert b"Retourn\xe9" in raw  # the original bytes, not a replacement character
    # the item of the rejected order cascades
    assert report["datasets"]["order_items"]["reasons"] == {"order_id.references": 1}


def test_a_file_whose_only_row_is_not_utf8(validate: Any) -> None:
    orders = {"a.csv": ORDERS, "b.csv": ORDERS_HEADER.encode() + b"3,9,Retourn\xe9,2025-03-02T10:00:00,,,,1\n"}
    report, _, rejected = validate(orders=orders)
    assert counts(report, "orders") == (3, 2, 1)
    assert [(r["_file"], r["_line"], r["_reasons"]) for r in rejected["orders"]] == [("orders/b.csv", "2",
                                                                                    "row.encoding")]


def test_non_utf8_bytes_in_products_reject_only_that_product(validate: Any) -> None:
    products = PRODUCTS.encode() + b"3,S3,1,Br\xfccher,x,y,5.00,D\n"
    report, _, rejected = validate(products=products)
    assert counts(report, "products") == (3, 2, 1)
    assert rejected["products"][0]["_reasons"] == "row.encoding"


def test_file_missing_a_required_column(validate: Any) -> None:
    items_no_price = "id,order_id,product_id\n1,1,1\n2,2,2\n"
    report, _, rejected = validate(items={"a.csv": items_no_price, "b.csv": ITEMS_HEADER + "3,1,7,2,,,,,,5.00\n"})
    assert counts(report, "order_items") == (3, 1, 2)
    assert report["datasets"]["order_items"]["reasons"] == {"sale_price.missing_column": 2}
    assert [(r["_file"], r["_line"]) for r in rejected["order_items"]] == [("order_items/a.csv", "2"),
                                                                          ("order_items/a.csv", "3")]


def test_rejected_output_has_file_line_and_reasons(tmp_path: Path, validate: Any) -> None:
    items = ITEMS_HEADER + "1,1,7,1,Complete,,,,,9.50\n2,2,8,2,Returned,,,,,0\nx,99,8,2,,,,,,-1\n"
    report, _, rejected = validate(items={"part-7.csv": items})
    assert [(r["_file"], r["_line"], r["_reasons"]) for r in rejected["order_items"]] == [
        ("order_items/part-7.csv", "3", "sale_price.gt"),
        ("order_items/part-7.csv", "4", "id.type;order_id.references;sale_price.gt"),
    ]
    assert rejected["order_items"][1]["id"] == "x"  # the original value
    header = (tmp_path / "out" / "rejected" / "order_items.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",")[:3] == ["_file", "_line", "_reasons"]
    assert report["files"]["order_items/part-7.csv"] == {"rows_in": 3, "rows_valid": 1, "rows_rejected": 2}


def test_all_quirks_in_one_batch_match_the_oracle(tmp_path: Path, cfg: PipelineConfig, write_batch: Any,
                                                  kpis_of: Any) -> None:
    bom, nl = "\ufeff", "\r\n"
    products = (bom + "retail_price,id,category,name\r\n10.00,1,\"Books, Rare\",\"A \"\"b\"\"\"\r\n"
                "20.00,2,Toys,x\r\n\r\n0,3,Toys,y\r\n")
    orders_a = (ORDERS_HEADER + "1,7,Returned,2025-03-01T10:00:00Z\n\n2,8,Complete,2025-03-01T23:30:00-02:00,,,,1\n")
    orders_b = b"order_id,user_id,status,created_at,extra\n3,9,Compl\xe8te,2025-03-03T10:00:00,1\n4,9,,2025-03-03 09:00:00.5,2\n"
    items = io.StringIO()
    items.write(bom + "quantity,sale_price,product_id,order_id,id,note" + nl)
    for row in ["2,9.99,1,1,1,\"a, b\"", ",20.00,2,1,2,", "1,5.00,3,1,3,", "3,1.50,2,2,4,", "1,7.00,1,3,5,",
                "1,7.00,1,4,6", "0,1.00,1,4,7,", "1,1.00,1,4,6,dup"]:
        items.write(row + nl)
    batch = write_batch(tmp_path / "b", products, {"a.csv": orders_a, "b.csv": orders_b, "c.csv": b""},
                        {"x.csv": items.getvalue(), "y.csv": ITEMS_HEADER})
    report = process_batches(cfg, [batch], tmp_path / "out")["batches"][0]["datasets"]
    expected = oracle([batch])
    assert {ds: {k: v for k, v in s.items() if k != "reasons"} for ds, s in report.items()} == expected.reports[0]
    assert kpis_of(tmp_path / "out") == (expected.order_kpi, expected.category_kpi)
    assert report["orders"]["reasons"] == {"row.encoding": 1}
    assert report["order_items"]["reasons"] == {"id.unique": 1, "order_id.references": 1, "product_id.references": 1,
                                                "quantity.gt": 1}


def test_quirks_beyond_the_first_chunk_match_the_oracle(tmp_path: Path, cfg: PipelineConfig, write_batch: Any,
                                                        kpis_of: Any) -> None:
    """Validation streams files in chunks: duplicates across a chunk boundary, and a short row, a blank line and
    a non-UTF-8 row in a later chunk, are decided exactly as in a small file."""
    chunk = getattr(validate_module, "CHUNK_ROWS", 8192)
    n = chunk + 50
    orders = io.StringIO()
    orders.write(ORDERS_HEADER)
    for i in range(1, n + 1):
        day = 1 + i % 3
        if i == chunk + 5:
            orders.write("5,99,Complete,2025-03-09T10:00:00,,,,1\n")  # a duplicate of an order of chunk 1
        elif i == chunk + 7:
            orders.write(f"{i},7,Returned,2025-03-0{day}T10:00:00\n")  # short: trailing optional columns absent
        elif i == chunk + 9:
            orders.write("\n")  # a blank line
        else:
            orders.write(f"{i},{i % 50},{'Returned' if i % 7 == 0 else 'Complete'},2025-03-0{day}T10:00:00,,,,1\n")
    raw_orders = orders.getvalue().encode() + b"999999,7,Retourn\xe9,2025-03-01T10:00:00,,,,1\n"
    items = io.StringIO()
    items.write(ITEMS_HEADER)
    for i in range(1, n + 1):
        items.write(f"{i},{i},7,{1 + i % 2},,,,,,{i % 13 + 1}.{i % 100:02d}\n")
    items.write(f"{n + 1},999999,7,1,,,,,,1.00\n{n + 2},{chunk + 7},7,2,,,,,,3.00\n{n + 3},5,7,1,,,,,,2.00\n")
    batch = write_batch(tmp_path / "big", PRODUCTS, {"a.csv": raw_orders}, {"a.csv": items.getvalue()})
    report = process_batches(cfg, [batch], tmp_path / "out")["batches"][0]["datasets"]
    expected = oracle([batch])
    assert {ds: {k: v for k, v in s.items() if k != "reasons"} for ds, s in report.items()} == expected.reports[0]
    assert report["orders"]["reasons"] == {"order_id.unique": 1, "row.encoding": 1}
    # items of: the order replaced by the duplicate line, the blank line, the non-UTF-8 order
    assert report["order_items"]["reasons"] == {"order_id.references": 3}
    assert kpis_of(tmp_path / "out") == (expected.order_kpi, expected.category_kpi)


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", None, b"\r\n"], ids=["0-byte", "bom-only", "header-only",
                                                                                "one-empty-line"])
def test_a_batch_with_no_rows_at_all(tmp_path: Path, cfg: PipelineConfig, write_batch: Any, kpis_of: Any,
                                     content: bytes | None) -> None:
    batch = write_batch(tmp_path / "b", content, content, content)
    report = process_batches(cfg, [batch], tmp_path / "out")["batches"][0]
    assert report["status"] == "SUCCEEDED"
    assert {ds: s["rows_in"] for ds, s in report["datasets"].items()} == {"products": 0, "orders": 0,
                                                                          "order_items": 0}
    assert kpis_of(tmp_path / "out") == ({}, {})


def test_several_files_of_one_header_with_one_broken_and_one_refused(validate: Any) -> None:
    """DuckDB reads files of one header together; a file its reader cannot read at all (a line ended by
    a lone CR among LF ones) or refuses records of is read alone or by the reference reader, and every other
    file keeps its own line numbers."""
    orders = {
        "a.csv": ORDERS,
        "b.csv": ORDERS_HEADER + "3,9,Complete,2025-03-03T10:00:00,,,,1\r4,9,Complete,2025-03-04T10:00:00,,,,1\n",
        "c.csv": ORDERS_HEADER + "5,9,Complete,2025-03-05T10:00:00,,,,1,extra\n6,9,Complete,2025-03-06T10:00:00,,,,1\n",
        "d.csv": ORDERS_HEADER + "7,9,Complete,2025-03-07T10:00:00,,,,1\n8,x,Complete,2025-03-08T10:00:00,,,,1\n",
        "e.csv": ORDERS_HEADER + "9,y,Complete,2025-03-09T10:00:00,,,,1\n",
    }
    report, valid, rejected = validate(orders=orders)
    assert sorted(int(r["order_id"]) for r in valid["orders"]) == [1, 2, 3, 4, 5, 6, 7]  # 5: its surplus field is dropped
    assert [(r["_file"].rsplit("/", 1)[-1], r["_line"], r["_reasons"]) for r in rejected["orders"]] == [
        ("d.csv", "3", "user_id.type"), ("e.csv", "2", "user_id.type")]
    assert {f.rsplit("/", 1)[-1]: s["rows_in"] for f, s in report["files"].items() if "/orders/" in f or f.startswith("orders")} == {
        "a.csv": 2, "b.csv": 2, "c.csv": 2, "d.csv": 2, "e.csv": 1}
