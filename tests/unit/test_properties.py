"""Property-based tests (hypothesis) on small generated batches full of invalid values, duplicates and dangling
references: rows reconcile, re-processing is a no-op, splitting a batch changes nothing, categories add up to
orders, and the engine agrees with the independent oracle (tests/oracle.py).

The properties about validation (rows reconcile, the oracle) also get CSV-level quirks (BOM, CRLF, reordered
and extra columns, short rows, blank lines, non-UTF-8 bytes); the ones about the transform get clean CSV
with dirty values, so a validation bug does not hide what they check."""

from __future__ import annotations

import csv
import io
import os
import random
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from chalicelib.config import default_config_path, load_config, parse_config
from kpipe.engine.validate import validate_batch
from kpipe.process import process_batches
from tests.oracle import oracle
from tests.support import examples, read_valid
from tests.support import read_kpis as kpis

# Deterministic (same examples every run) and no shrinking: a failure is reported as found, so a failing
# property costs no more time than a passing one (the unit tests hold the minimal cases).
CFG = load_config(default_config_path())  # module-level, so a failing example does not print the whole config
SETTINGS = settings(max_examples=examples(40), deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PRODUCT_COLUMNS = ["id", "sku", "cost", "category", "name", "brand", "retail_price", "department"]
ORDER_COLUMNS = ["order_id", "user_id", "status", "created_at", "returned_at", "shipped_at", "delivered_at",
                 "num_of_item"]
ITEM_COLUMNS = ["id", "order_id", "user_id", "product_id", "status", "created_at", "shipped_at", "delivered_at",
                "returned_at", "sale_price"]

# Values: mostly valid (listed several times to weigh them), some of every invalid kind. Small key spaces make
# duplicates and dangling references common.
product_ids = st.sampled_from(["1", "2", "3", "4"] * 3 + [" 2 ", "x", "", "2.0"])
categories = st.sampled_from(["Books", "Toys", "Games, Board", 'Say "cheese"', "Caf\u00e9"] * 2 + ["", "  "])
prices = st.sampled_from(["10.00", "5.5", ".5", "19.99", "0.01", "3.333"] * 3 + ["0", "-1", "1e3", "NaN", "inf", "",
                                                                                 "12."])
order_ids = st.sampled_from(["1", "2", "3", "4", "5", "6"] * 3 + ["+6", "x", "", "1.0"])
user_ids = st.sampled_from(["7", "8", "9", "10"] * 3 + ["", "u"])
statuses = st.sampled_from(["Complete", "Returned", "returned", " RETURNED ", "Shipped", ""])
timestamps = st.sampled_from([
    "2025-03-01T10:00:00", "2025-03-01 23:59:59", "2025-03-01T23:00:00-02:00", "2025-03-02T00:30:00+01:00",
    "2025-03-02T12:00:00Z", "2025-03-02T12:00:00.123456789", "2025-03-03T08:15:00+05:30",
] * 3 + ["2025-13-45T00:00:00", "2025-02-29T10:00:00", "yesterday", ""])
item_ids = st.sampled_from(["1", "2", "3", "4", "5", "6", "7", "8"] * 3 + ["", "z"])
item_order_ids = st.sampled_from(["1", "2", "3", "4", "5", "6", "7", "x"])
item_prices = st.sampled_from(["9.99", "20", "0.01", "3.333", "0.005", "100.10"] * 3 + ["0", "-5", "NaN", "1e2", ""])
quantities = st.sampled_from(["", "1", "2", "3"] * 3 + ["0", "-1", "2.5"])


@st.composite
def product_rows(draw: Any) -> list[dict[str, str]]:
    return draw(st.lists(st.fixed_dictionaries(
        {"id": product_ids, "category": categories, "retail_price": prices}), min_size=1, max_size=5))


@st.composite
def order_rows(draw: Any) -> list[dict[str, str]]:
    return draw(st.lists(st.fixed_dictionaries(
        {"order_id": order_ids, "user_id": user_ids, "status": statuses, "created_at": timestamps}),
        min_size=1, max_size=8))


@st.composite
def item_rows(draw: Any, unique_ids: bool = False) -> list[dict[str, str]]:
    rows = draw(st.lists(st.fixed_dictionaries(
        {"id": item_ids, "order_id": item_order_ids,
         "product_id": product_ids, "sale_price": item_prices, "quantity": quantities, "status": statuses}),
        min_size=0, max_size=12))
    if unique_ids:
        for n, row in enumerate(rows, start=1):
            row["id"] = str(n)
    return rows


@st.composite
def file_styles(draw: Any) -> dict[str, Any]:
    """How a file is written: BOM, CRLF, column order, an extra column, some short rows, blank lines."""
    return {"bom": draw(st.booleans()), "crlf": draw(st.booleans()), "seed": draw(st.integers(0, 2**16)),
            "reorder": draw(st.booleans()), "extra": draw(st.booleans()),
            "short": draw(st.dictionaries(st.integers(0, 3), st.integers(1, 2), max_size=3)),
            "blank": draw(st.booleans()), "latin1": draw(st.one_of(st.none(), st.integers(0, 3)))}


def render(rows: list[dict[str, str]], columns: list[str], style: dict[str, Any] | None, quantity: bool = True) -> str:
    header = [c for c in columns]
    if "quantity" in (rows[0] if rows else {}) and quantity:
        header.append("quantity")
    if style and style["reorder"]:
        random.Random(style["seed"]).shuffle(header)
    if style and style["extra"]:
        header.insert(1, "note")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n" if style and style["crlf"] else "\n")
    writer.writerow(header)
    for n, row in enumerate(rows):
        values = [row.get(c, "note, with comma" if c == "note" else "") for c in header]
        if style and n in style["short"]:
            # a short row: some trailing columns absent (never all of them, so it is not a blank line)
            values = values[: max(1, len(values) - style["short"][n])]
        if style and style["latin1"] == n:
            values[-1] = f"{values[-1]}caf\udce9"  # written as the single byte 0xE9: not UTF-8
        writer.writerow(values)
        if style and style["blank"] and n == 0:
            buf.write("\r\n" if style["crlf"] else "\n")
    if style and style["blank"] and not rows:
        buf.write("\r\n" if style["crlf"] else "\n")  # a header-only file with a trailing empty line
    text = buf.getvalue()
    return ("\ufeff" + text) if style and style["bom"] else text


def split_in_two(rows: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    half = (len(rows) + 1) // 2
    return [rows[:half], rows[half:]]


@st.composite
def batches(draw: Any, unique_item_ids: bool = False, quirks: bool = True) -> dict[str, Any]:
    """One batch: products, orders and items as rows, plus how each file is written."""
    styles = st.one_of(st.none(), file_styles()) if quirks else st.none()
    return {"products": draw(product_rows()), "orders": draw(order_rows()), "items": draw(item_rows(unique_item_ids)),
            "styles": [draw(styles) for _ in range(5)], "quantity_in": draw(st.sampled_from(["both", "first", "none"]))}


def encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def write(batch_dir: Path, batch: dict[str, Any]) -> Path:
    s = batch["styles"]
    (batch_dir / "orders").mkdir(parents=True)
    (batch_dir / "order_items").mkdir()
    (batch_dir / "products.csv").write_bytes(encode(render(batch["products"], PRODUCT_COLUMNS, s[0])))
    for n, part in enumerate(split_in_two(batch["orders"])):
        (batch_dir / "orders" / f"part-{n}.csv").write_bytes(encode(render(part, ORDER_COLUMNS, s[1 + n])))
    for n, part in enumerate(split_in_two(batch["items"])):
        quantity = batch["quantity_in"] == "both" or (batch["quantity_in"] == "first" and n == 0)
        (batch_dir / "order_items" / f"part-{n}.csv").write_bytes(encode(render(part, ITEM_COLUMNS, s[3 + n], quantity)))
    return batch_dir


# Each example writes and deletes a few dozen small files: on tmpfs that is ~20x faster than on a disk.
_FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kpipe-prop-", dir=_FAST_TMP) as tmp:
        yield Path(tmp)


def data_rows(path: Path) -> int:
    """Records in a raw file after the header, not counting blank lines."""
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    records = list(csv.reader(io.StringIO(text, newline="")))
    return sum(1 for r in records[1:] if r)


# ------------------------------------------------------------------------------------------------ properties


@SETTINGS
@given(batches())
def test_every_row_is_valid_xor_rejected(batch: dict[str, Any]) -> None:
    with workdir() as tmp:
        raw = write(tmp / "raw", batch)
        report = validate_batch(CFG, raw, tmp / "out", "b-prop")
        for ds, stats in report["datasets"].items():
            files = sorted(p for p in raw.rglob("*.csv") if report["files"].get(p.relative_to(raw).as_posix()) is not None
                           and p.relative_to(raw).as_posix() in _files_of(report, ds))
            assert stats["rows_in"] == sum(data_rows(p) for p in files), ds
            assert stats["rows_in"] == stats["rows_valid"] + stats["rows_rejected"], ds
            with open(tmp / "out" / "rejected" / f"{ds}.csv", encoding="utf-8", errors="surrogateescape",
                      newline="") as fh:
                rejected = list(csv.DictReader(fh))
            valid = read_valid(tmp / "out" / "validated" / f"{ds}.parquet")
            assert len(rejected) == stats["rows_rejected"] and len(valid) == stats["rows_valid"], ds
            assert all(r["_reasons"] for r in rejected), f"{ds}: a rejected row without a reason: {rejected}"
            assert len({(r["_file"], r["_line"]) for r in rejected}) == len(rejected), ds
            reasons = [why for r in rejected for why in r["_reasons"].split(";")]
            assert sum(stats["reasons"].values()) == len(reasons), ds
            assert {k: reasons.count(k) for k in set(reasons)} == stats["reasons"], ds


def _files_of(report: dict[str, Any], dataset: str) -> set[str]:
    prefix = {"products": "products.csv", "orders": "orders/", "order_items": "order_items/"}[dataset]
    return {f for f in report["files"] if f.startswith(prefix)}


@SETTINGS
@given(batches(quirks=False))
def test_processing_a_batch_twice_equals_once(batch: dict[str, Any]) -> None:
    with workdir() as tmp:
        raw = write(tmp / "raw", batch)
        process_batches(CFG, [raw], tmp / "once")
        once = kpis(tmp / "once")
        tables = [(tmp / "once" / f"{t}.json").read_bytes() for t in ("OrderKPI", "CategoryKPI")]
        process_batches(CFG, [raw], tmp / "once")
        assert [(tmp / "once" / f"{t}.json").read_bytes() for t in ("OrderKPI", "CategoryKPI")] == tables
        process_batches(CFG, [raw, raw], tmp / "twice")
        assert kpis(tmp / "twice") == once


@SETTINGS
@given(batches(unique_item_ids=True, quirks=False), st.randoms(use_true_random=False))
def test_a_batch_split_in_two_gives_the_same_kpis(batch: dict[str, Any], rnd: Any) -> None:
    """Orders and items are partitioned by order (so every duplicate of an order key stays in one part);
    both parts carry the same catalog."""
    def key(row: dict[str, str]) -> str:  # "6", " 6" and "+6" are one order key
        return row["order_id"].strip().lstrip("+")

    side = {k: rnd.random() < 0.5 for k in sorted({key(r) for r in batch["orders"] + batch["items"]})}
    parts = [{**batch, "orders": [r for r in batch["orders"] if side[key(r)] == flag],
              "items": [r for r in batch["items"] if side[key(r)] == flag]} for flag in (True, False)]
    with workdir() as tmp:
        whole = process_batches(CFG, [write(tmp / "whole", batch)], tmp / "one")
        split = process_batches(CFG, [write(tmp / "a", parts[0]), write(tmp / "b", parts[1])], tmp / "two")
        assert kpis(tmp / "one") == kpis(tmp / "two")
        for ds in ("orders", "order_items"):
            assert whole["batches"][0]["datasets"][ds]["rows_valid"] == sum(
                b["datasets"][ds]["rows_valid"] for b in split["batches"])


@SETTINGS
@given(st.lists(batches(quirks=False), min_size=1, max_size=3))
def test_category_revenue_adds_up_to_order_revenue(batch_list: list[dict[str, Any]]) -> None:
    with workdir() as tmp:
        dirs = [write(tmp / f"b{n}", b) for n, b in enumerate(batch_list)]
        process_batches(CFG, dirs, tmp / "out")
        orders, cats = kpis(tmp / "out")
        per_date: dict[str, list[Decimal]] = defaultdict(list)
        for (_, day), item in cats.items():
            per_date[day].append(item["daily_revenue"])
        assert set(per_date) <= set(orders)  # an item's date is always its order's date
        for day, item in orders.items():
            revenues = per_date.get(day, [])
            assert abs(sum(revenues, Decimal(0)) - item["total_revenue"]) <= Decimal("0.01") * max(1, len(revenues))
            assert 0 <= item["return_rate"] <= 1
            assert item["unique_customers"] <= item["total_orders"]
        for item in cats.values():
            assert 0 <= item["avg_return_rate"] <= 1
            assert item["avg_order_value"] <= item["daily_revenue"]


ZONES = ["America/Sao_Paulo", "Asia/Kolkata", "Pacific/Kiritimati", "Europe/Berlin"]
ZONED = {tz: parse_config(default_config_path().read_text(encoding="utf-8").replace("timezone: UTC\n",
                                                                                   f"timezone: {tz}\n"))
         for tz in ZONES}


@SETTINGS
@given(st.lists(batches(quirks=False), min_size=2, max_size=4), st.data())
def test_reprocessing_any_earlier_batch_changes_nothing(batch_list: list[dict[str, Any]], data: Any) -> None:
    with workdir() as tmp:
        dirs = [write(tmp / f"b{n}", b) for n, b in enumerate(batch_list)]
        process_batches(CFG, dirs, tmp / "out")
        before = [(tmp / "out" / f"{t}.json").read_bytes() for t in ("OrderKPI", "CategoryKPI")]
        again = data.draw(st.sampled_from(dirs))
        process_batches(CFG, [again], tmp / "out")
        assert [(tmp / "out" / f"{t}.json").read_bytes() for t in ("OrderKPI", "CategoryKPI")] == before


def assert_engine_equals_oracle(batch_list: list[dict[str, Any]], tz: str = "UTC") -> None:
    cfg = ZONED[tz] if tz != "UTC" else CFG
    assert cfg.timezone == tz
    with workdir() as tmp:
        dirs = [write(tmp / f"b{n}", b) for n, b in enumerate(batch_list)]
        report = process_batches(cfg, dirs, tmp / "out")
        expected = oracle(dirs, tz=tz)
        counts = [{ds: {k: v for k, v in s.items() if k != "reasons"} for ds, s in b["datasets"].items()}
                  for b in report["batches"]]
        assert counts == expected.reports
        assert kpis(tmp / "out") == (expected.order_kpi, expected.category_kpi)


@SETTINGS
@given(st.lists(batches(quirks=False), min_size=1, max_size=3))
def test_engine_equals_the_oracle_across_batches(batch_list: list[dict[str, Any]]) -> None:
    """Later batches re-send orders (often on another date) and items: replacement, moves, carried items."""
    assert_engine_equals_oracle(batch_list)


@SETTINGS
@given(st.lists(batches(), min_size=1, max_size=3))
def test_engine_equals_the_oracle_with_csv_quirks(batch_list: list[dict[str, Any]]) -> None:
    assert_engine_equals_oracle(batch_list)


@SETTINGS
@given(st.lists(batches(quirks=False), min_size=1, max_size=3), st.sampled_from(ZONES))
def test_engine_equals_the_oracle_in_other_timezones(batch_list: list[dict[str, Any]], tz: str) -> None:
    """Naive timestamps are local; offsets convert; order_date is the local calendar date."""
    assert_engine_equals_oracle(batch_list, tz)
