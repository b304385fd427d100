"""The generator feeds the demo, the e2e tests and the benchmark: its data must be exactly as advertised.

The independent oracle (tests/oracle.py) is the judge of "valid" here, so these tests also keep the
generator honest about which rows it meant to break.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.pandas_baseline import compute
from kpipe.generate import generate_batches, generate_command
from tests.oracle import oracle, parse_datetime_date, parse_int, read_rows

PRODUCTS = ["id", "sku", "cost", "category", "name", "brand", "retail_price", "department"]
ORDERS = ["order_id", "user_id", "status", "created_at", "returned_at", "shipped_at", "delivered_at", "num_of_item"]
ITEMS = ["id", "order_id", "user_id", "product_id", "status", "created_at", "shipped_at", "delivered_at",
         "returned_at", "sale_price"]


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def csv_files(batch: Path) -> list[Path]:
    return [batch / "products.csv", *sorted(batch.glob("orders/*.csv")), *sorted(batch.glob("order_items/*.csv"))]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return generate_batches(tmp_path_factory.mktemp("clean"), 1500, batches=2, seed=3)


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return generate_batches(tmp_path_factory.mktemp("dirty"), 1500, batches=2, invalid_fraction=0.05, seed=3)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    kw = {"batches": 2, "invalid_fraction": 0.05, "files_per_dataset": 2}
    generate_batches(tmp_path / "a", 300, seed=11, **kw)
    generate_batches(tmp_path / "b", 300, seed=11, **kw)
    generate_batches(tmp_path / "c", 300, seed=12, **kw)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    assert a != c


def test_layout_and_exact_headers_of_a_clean_batch(clean: list[Path]) -> None:
    assert [p.name for p in clean] == ["batch-1", "batch-2"]
    for batch in clean:
        assert sorted(p.name for p in (batch / "orders").iterdir()) == [f"part-000{i}.csv" for i in (1, 2, 3)]
        assert sorted(p.name for p in (batch / "order_items").iterdir()) == [f"part-000{i}.csv" for i in (1, 2, 3)]
        assert read_rows(batch / "products.csv")[0] == PRODUCTS
        for p in sorted(batch.glob("orders/*.csv")):
            assert read_rows(p)[0] == ORDERS
        item_headers = [read_rows(p)[0] for p in sorted(batch.glob("order_items/*.csv"))]
        assert item_headers == [[*ITEMS, "quantity"], ITEMS, [*ITEMS, "quantity"]]
        for p in csv_files(batch):
            raw = p.read_bytes()
            assert not raw.startswith(b"\xef\xbb\xbf") and b"\r\n" not in raw, "quirks only in dirty mode"


def test_clean_batches_have_no_rejects(clean: list[Path]) -> None:
    res = oracle(clean)
    for report in res.reports:
        assert set(report) == {"products", "orders", "order_items"}
        for counts in report.values():
            assert counts["rows_in"] > 0
            assert counts["rows_rejected"] == 0
            assert counts["rows_valid"] == counts["rows_in"]


def test_realistic_shape(clean: list[Path]) -> None:
    batch = clean[0]
    orders = [r for p in sorted(batch.glob("orders/*.csv")) for r, _ in read_rows(p)[1]]
    items = [r for p in sorted(batch.glob("order_items/*.csv")) for r, _ in read_rows(p)[1]]
    products = [r for r, _ in read_rows(batch / "products.csv")[1]]
    assert len(orders) == 1500
    assert 2.0 <= len(items) / len(orders) <= 2.4
    per_order = Counter(r["order_id"] for r in items)
    assert max(per_order.values()) >= 3 and min(per_order.values()) == 1
    assert {r["status"] for r in orders} == {"Complete", "Shipped", "Processing", "Cancelled", "Returned"}
    returned = {r["order_id"] for r in orders if r["status"] == "Returned"}
    of_returned = Counter(r["status"] for r in items if r["order_id"] in returned)
    assert of_returned["Returned"] > 0.6 * sum(of_returned.values())
    assert len({r["category"] for r in products}) >= 18
    prices = [r["retail_price"] for r in products] + [r["sale_price"] for r in items]
    assert all(len(p.split(".")[1]) == 2 for p in prices)
    stamps = [r["created_at"] for r in orders]
    assert any(s.endswith("Z") for s in stamps)
    assert any(s[-6] in "+-" and s[-3] == ":" for s in stamps)
    assert any(s[10] == " " and len(s) == 19 for s in stamps)
    customers = Counter(r["user_id"] for r in orders)
    assert 0.2 < sum(1 for n in customers.values() if n > 1) / len(customers) < 0.9
    assert any("," in r["name"] and '"' in r["name"] for r in products)
    assert any(r.get("quantity") not in (None, "", "1") for r in items)


def test_dirty_batches_reject_rows_in_every_dataset_for_every_kind(dirty: list[Path]) -> None:
    res = oracle(dirty)
    for report in res.reports:
        for counts in report.values():
            assert counts["rows_rejected"] > 0
            assert counts["rows_in"] == counts["rows_valid"] + counts["rows_rejected"]
        for ds in ("orders", "order_items"):
            share = report[ds]["rows_rejected"] / report[ds]["rows_in"]
            assert 0.025 <= share <= 0.1, (ds, share)
    reasons = res.reasons[0]
    assert {"id: not an int", "id: missing", "id: duplicate", "category: missing", "retail_price: not > 0",
            "retail_price: not a decimal", "retail_price: missing"} <= set(reasons["products"])
    assert {"order_id: not an int", "order_id: missing", "order_id: duplicate", "user_id: missing",
            "user_id: not an int", "created_at: missing", "created_at: not a datetime",
            "created_at: impossible datetime"} <= set(reasons["orders"])
    assert {"id: not an int", "id: missing", "id: duplicate", "order_id: missing", "order_id: not an int",
            "product_id: missing", "product_id: not an int", "sale_price: not a decimal", "sale_price: missing",
            "sale_price: not > 0", "quantity: not > 0", "quantity: not an int",
            "order_id: no valid order in this batch", "product_id: no valid product in this batch",
            "file lacks required column sale_price", "row is not UTF-8"} <= set(reasons["order_items"])
    assert reasons["order_items"]["row is not UTF-8"] == 1


def test_dirty_batches_carry_every_csv_quirk(dirty: list[Path]) -> None:
    batch = dirty[0]
    files = csv_files(batch)
    raws = {p: p.read_bytes() for p in files}
    assert any(r.startswith(b"\xef\xbb\xbf") for r in raws.values())
    assert any(b"\r\n" in r for r in raws.values())
    assert any(b"\r\n" not in r for r in raws.values())
    headers = {p: read_rows(p)[0] for p in files}
    assert any(len(rows) == 0 for p in files for rows in [read_rows(p)[1]] if headers[p] == ORDERS)
    assert any(h[0] != "order_id" and set(h) == set(ORDERS) for h in headers.values())
    assert any(h[0] != "id" and set(h) >= set(ITEMS) for h in headers.values())
    assert any(set(h) - set(PRODUCTS) - set(ORDERS) - set(ITEMS) - {"quantity"} for h in headers.values())
    names = [r["name"] for r, _ in read_rows(batch / "products.csv")[1]]
    assert any("," in n and '"' in n for n in names if n)


def _orders(batch: Path) -> dict[int, dict[str, str | None]]:
    out: dict[int, dict[str, str | None]] = {}
    for p in sorted(batch.glob("orders/*.csv")):
        for row, _ in read_rows(p)[1]:
            out[parse_int(row["order_id"])] = row
    return out


def test_later_batches_resend_move_and_correct_orders(clean: list[Path]) -> None:
    from zoneinfo import ZoneInfo

    utc = ZoneInfo("UTC")
    first, second = _orders(clean[0]), _orders(clean[1])
    resent = first.keys() & second.keys()
    assert len(second) - len(resent) == 1500, "each batch brings its own new orders"
    assert len(resent) >= 30
    day = {k: parse_datetime_date(first[k]["created_at"], utc) for k in resent}
    moved = [k for k in resent if parse_datetime_date(second[k]["created_at"], utc) != day[k]]
    to_returned = [k for k in resent if first[k]["status"] != "Returned" and second[k]["status"] == "Returned"]
    assert moved and to_returned
    # Re-sent items exist, some re-priced, and each names an order that is in the same batch.
    items1 = {r["id"]: r for p in sorted(clean[0].glob("order_items/*.csv")) for r, _ in read_rows(p)[1]}
    items2 = {r["id"]: r for p in sorted(clean[1].glob("order_items/*.csv")) for r, _ in read_rows(p)[1]}
    again = items1.keys() & items2.keys()
    assert again
    assert all(parse_int(items2[i]["order_id"]) in second for i in again)
    assert any(items1[i]["sale_price"] != items2[i]["sale_price"] for i in again)
    # Not every item of a re-sent order is re-sent: some must follow their moved order on their own.
    assert any(r["id"] not in items2 for r in items1.values() if parse_int(r["order_id"]) in resent)
    # Each key counts once however often it was sent.
    res = oracle(clean)
    assert sum(v["total_orders"] for v in res.order_kpi.values()) == len(first.keys() | second.keys())


def test_some_categories_change_between_catalog_snapshots(clean: list[Path]) -> None:
    cats = [{r["id"]: r["category"] for r, _ in read_rows(b / "products.csv")[1]} for b in clean]
    changed = [k for k in cats[0] if cats[1].get(k) not in (None, cats[0][k])]
    assert 0 < len(changed) < len(cats[0]) / 5
    assert len(cats[1]) > len(cats[0])


def _pandas_as_oracle(batch: Path) -> tuple[dict[str, dict[str, Decimal]], dict[tuple[str, str], dict[str, Decimal]],
                                            dict[str, dict[str, int]]]:
    got = compute(batch)
    order = {r["order_date"]: {k: Decimal(v) for k, v in r.items() if k != "order_date"} for r in got["OrderKPI"]}
    cat = {(r["category"], r["order_date"]): {k: v for k, v in r.items() if k not in ("category", "order_date")}
           for r in got["CategoryKPI"]}
    return order, cat, got["report"]


@pytest.mark.parametrize("which", ["clean", "dirty"])
def test_pandas_baseline_agrees_with_the_oracle(which: str, request: pytest.FixtureRequest) -> None:
    batch = request.getfixturevalue(which)[0]
    expected = oracle([batch])
    order, cat, report = _pandas_as_oracle(batch)
    assert len(order) >= 28 and len(cat) >= 200
    assert order == expected.order_kpi
    assert cat == expected.category_kpi
    assert report == expected.reports[0]


def test_cli_generates_and_reports(tmp_path: Path) -> None:
    result = CliRunner().invoke(generate_command, [str(tmp_path / "out"), "--orders", "200", "--batches", "2",
                                                   "--invalid-fraction", "0.05", "--seed", "5",
                                                   "--files-per-dataset", "2"])
    assert result.exit_code == 0, result.output
    assert "batch-1" in result.output and "batch-2" in result.output
    assert "orders/part-0002.csv" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["batch-1", "batch-2"]
    res = oracle([tmp_path / "out" / "batch-1", tmp_path / "out" / "batch-2"])
    assert all(r["orders"]["rows_rejected"] > 0 for r in res.reports)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_batches(tmp_path, 0)
    with pytest.raises(ValueError):
        generate_batches(tmp_path, 10, invalid_fraction=0.7)
    result = CliRunner().invoke(generate_command, [str(tmp_path / "x")])
    assert result.exit_code != 0 and "--orders" in result.output


def test_single_file_dirty_batch_still_covers_the_quirks(tmp_path: Path) -> None:
    [batch] = generate_batches(tmp_path, 400, invalid_fraction=0.1, files_per_dataset=1, seed=2)
    with open(batch / "order_items" / "part-0001.csv", newline="", encoding="utf-8", errors="replace") as fh:
        header = next(csv.reader(fh))
    assert "quantity" in header
    res = oracle([batch])
    assert all(c["rows_rejected"] > 0 for c in res.reports[0].values())
    order, cat, report = _pandas_as_oracle(batch)
    assert (order, cat, report) == (res.order_kpi, res.category_kpi, res.reports[0])
