"""An independent reference implementation of docs/semantics.md, for tests only.

Why it exists: the engine is streaming petl driven by pipeline.yaml; a bug there and the same bug in a
test's expected numbers would agree with each other. This module re-derives every number from the spec
text with nothing but ``csv``, ``decimal``, ``datetime`` and ``re``, in the most obvious way (whole batch
in dicts, no cleverness, no speed), and deliberately imports nothing from ``kpipe`` or ``chalicelib``.

Decisions where the spec leaves room (each is a plain reading, stated so a disagreement is easy to find):
- Rounding is ``ROUND_HALF_UP`` (money to 2 places, rates to 4); ratios are computed from the unrounded
  sums and rounded once.
- "Unique in the batch (a later duplicate row is rejected)", read literally: a row is a duplicate when
  any earlier row of the batch carried the same parseable key, even if that earlier row was rejected for
  another field. Rows that are out as a whole before their fields are read (their file lacks a required
  column, or they hold non-UTF-8 bytes) claim no key.
- Decimal fraction needs digits: ``12.5`` and ``.5`` parse, ``12.`` does not. Digits are ASCII only.
- Datetime needs seconds (``HH:MM:SS``); fraction of any length (truncated to microseconds); the offset
  is ``Z`` or ``±HH:MM`` with hours < 24 and minutes < 60.
- A line that decodes to nothing but an empty record (a blank line) is not a row; any other record is.
- Header names are stripped of surrounding whitespace (and the BOM); matching is case-sensitive.
- "Returned" is ``status.strip().lower() == "returned"``.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

T = TypeVar("T")
MONEY = Decimal("0.01")
RATE = Decimal("0.0001")

_INT = re.compile(r"[+-]?[0-9]+")
_DEC = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)")
_DT = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?"
)
_UNDECODABLE = re.compile("[\udc80-\udcff]")

REQUIRED = {
    "products": ("id", "category", "retail_price"),
    "orders": ("order_id", "user_id", "created_at"),
    "order_items": ("id", "order_id", "product_id", "sale_price"),
}


class Invalid(Exception):
    """A field broke a rule; the row it is in is rejected."""


@dataclass
class OracleResult:
    order_kpi: dict[str, dict[str, Decimal]]
    category_kpi: dict[tuple[str, str], dict[str, Decimal]]
    reports: list[dict[str, dict[str, int]]]
    # Per batch: dataset -> reason ("<field>: <rule>") -> rejected rows; for tests of the generator.
    reasons: list[dict[str, Counter[str]]] = field(default_factory=list)


@dataclass
class _Order:
    order_date: str
    user_id: int
    returned: bool


@dataclass
class _Item:
    order_id: int
    category: str
    revenue: Decimal
    quantity: int
    returned: bool


@dataclass
class _State:
    orders: dict[int, _Order] = field(default_factory=dict)
    items: dict[int, _Item] = field(default_factory=dict)


# ---------------------------------------------------------------- field parsing


def _value(row: dict[str, str | None], name: str) -> str | None:
    raw = row.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    return raw or None


def parse_int(text: str | None) -> int:
    if text is None or not _INT.fullmatch(text):
        raise Invalid("not an int")
    return int(text)


def parse_decimal(text: str | None) -> Decimal:
    if text is None or not _DEC.fullmatch(text):
        raise Invalid("not a decimal")
    return Decimal(text)


def parse_datetime_date(text: str | None, tz: ZoneInfo) -> date:
    """The calendar date, in ``tz``, of an ISO 8601 timestamp (naive means already in ``tz``)."""
    m = _DT.fullmatch(text or "")
    if not m:
        raise Invalid("not a datetime")
    y, mo, d, h, mi, s, frac, off = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    try:
        naive = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro)
    except ValueError as exc:
        raise Invalid("impossible datetime") from exc
    if off is None:
        return naive.date()  # naive: taken to be in tz already
    if off == "Z":
        offset = timedelta(0)
    else:
        oh, om = int(off[1:3]), int(off[4:6])
        if oh > 23 or om > 59:
            raise Invalid("impossible datetime")
        offset = timedelta(hours=oh, minutes=om) * (1 if off[0] == "+" else -1)
    return naive.replace(tzinfo=timezone(offset)).astimezone(tz).date()


def _required(row: dict[str, str | None], name: str, parse: Callable[[str], T]) -> T:
    """Parse a required field; the reason names the field so tests can see which rule fired."""
    text = _value(row, name)
    if text is None:
        raise Invalid(f"{name}: missing")
    try:
        return parse(text)
    except Invalid as exc:
        raise Invalid(f"{name}: {exc}") from None


# ---------------------------------------------------------------- reading files


def read_rows(path: Path) -> tuple[list[str], list[tuple[dict[str, str | None], bool]]]:
    """Header and rows of one CSV file; each row comes with ``decodable`` (False: it held non-UTF-8 bytes).

    The whole file is decoded with ``surrogateescape`` so a bad byte survives as a lone surrogate in just
    the field it was in, and only that row is rejected.
    """
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = data.decode("utf-8", errors="surrogateescape")
    records = csv.reader(io.StringIO(text, newline=""))
    header_raw = next(records, None)
    if header_raw is None:
        return [], []
    header = [h.strip() for h in header_raw]
    rows: list[tuple[dict[str, str | None], bool]] = []
    for rec in records:
        if rec == []:
            continue
        row: dict[str, str | None] = {}
        for i, name in enumerate(header):
            if name not in row:
                row[name] = rec[i] if i < len(rec) else None
        rows.append((row, _UNDECODABLE.search("\x00".join(rec)) is None))
    return header, rows


def _dataset_files(batch_dir: Path, dataset: str) -> list[Path]:
    if dataset == "products":
        p = batch_dir / "products.csv"
        return [p] if p.is_file() else []
    return sorted((p for p in (batch_dir / dataset).glob("*.csv") if p.is_file()), key=lambda p: p.name)


def _each_row(batch_dir: Path, dataset: str) -> Any:
    """Yield ``(row, problem)``: problem is a reason the whole row is out before field rules, else None."""
    for path in _dataset_files(batch_dir, dataset):
        header, rows = read_rows(path)
        missing = [c for c in REQUIRED[dataset] if c not in header]
        for row, decodable in rows:
            if missing:
                yield row, f"file lacks required column {missing[0]}"
            elif not decodable:
                yield row, "row is not UTF-8"
            else:
                yield row, None


# ---------------------------------------------------------------- one batch


def _claim(seen: set[int], key: int) -> bool:
    """Register ``key``; True when an earlier row of the batch already had it (this row is the duplicate)."""
    if key in seen:
        return True
    seen.add(key)
    return False


def _process_batch(batch_dir: Path, tz: ZoneInfo, state: _State,
                   reasons: dict[str, Counter[str]]) -> dict[str, dict[str, int]]:
    """Validate one batch into ``state``; fill ``reasons`` (dataset -> reason -> rows); return the counts."""
    report: dict[str, dict[str, int]] = {}

    def count(dataset: str, ok: bool, reason: str = "") -> None:
        r = report[dataset]
        r["rows_in"] += 1
        r["rows_valid" if ok else "rows_rejected"] += 1
        if not ok:
            reasons[dataset][reason] += 1

    for ds in REQUIRED:
        report[ds] = {"rows_in": 0, "rows_valid": 0, "rows_rejected": 0}
        reasons[ds] = Counter()

    categories: dict[int, str] = {}
    seen: set[int] = set()
    for row, problem in _each_row(batch_dir, "products"):
        try:
            if problem:
                raise Invalid(problem)
            pid = _required(row, "id", parse_int)
            duplicate = _claim(seen, pid)
            category = _required(row, "category", str)
            if _required(row, "retail_price", parse_decimal) <= 0:
                raise Invalid("retail_price: not > 0")
            if duplicate:
                raise Invalid("id: duplicate")
        except Invalid as exc:
            count("products", False, str(exc))
            continue
        categories[pid] = category
        count("products", True)

    orders: dict[int, _Order] = {}
    seen = set()
    for row, problem in _each_row(batch_dir, "orders"):
        try:
            if problem:
                raise Invalid(problem)
            oid = _required(row, "order_id", parse_int)
            duplicate = _claim(seen, oid)
            uid = _required(row, "user_id", parse_int)
            day = _required(row, "created_at", lambda t: parse_datetime_date(t, tz))
            if duplicate:
                raise Invalid("order_id: duplicate")
        except Invalid as exc:
            count("orders", False, str(exc))
            continue
        status = _value(row, "status")
        orders[oid] = _Order(day.isoformat(), uid, (status or "").lower() == "returned")
        count("orders", True)

    items: dict[int, _Item] = {}
    seen = set()
    for row, problem in _each_row(batch_dir, "order_items"):
        try:
            if problem:
                raise Invalid(problem)
            iid = _required(row, "id", parse_int)
            duplicate = _claim(seen, iid)
            oid = _required(row, "order_id", parse_int)
            pid = _required(row, "product_id", parse_int)
            price = _required(row, "sale_price", parse_decimal)
            if price <= 0:
                raise Invalid("sale_price: not > 0")
            qty = 1 if _value(row, "quantity") is None else _required(row, "quantity", parse_int)
            if qty <= 0:
                raise Invalid("quantity: not > 0")
            if oid not in orders:
                raise Invalid("order_id: no valid order in this batch")
            if pid not in categories:
                raise Invalid("product_id: no valid product in this batch")
            if duplicate:
                raise Invalid("id: duplicate")
        except Invalid as exc:
            count("order_items", False, str(exc))
            continue
        status = _value(row, "status")
        items[iid] = _Item(oid, categories[pid], price * qty, qty, (status or "").lower() == "returned")
        count("order_items", True)

    # Across batches: a later valid row replaces the earlier one with the same key.
    state.orders.update(orders)
    state.items.update(items)
    return report


# ---------------------------------------------------------------- KPIs


def _ratio(num: Decimal | int, den: Decimal | int, unit: Decimal) -> Decimal:
    if den == 0:
        return Decimal(0).quantize(unit)
    return (Decimal(num) / Decimal(den)).quantize(unit, rounding=ROUND_HALF_UP)


def _kpis(state: _State) -> tuple[dict[str, dict[str, Decimal]], dict[tuple[str, str], dict[str, Decimal]]]:
    orders_by_date: dict[str, list[_Order]] = defaultdict(list)
    for o in state.orders.values():
        orders_by_date[o.order_date].append(o)
    revenue: dict[str, Decimal] = defaultdict(Decimal)
    sold: dict[str, int] = defaultdict(int)
    cat_revenue: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    cat_orders: dict[tuple[str, str], set[int]] = defaultdict(set)
    cat_returned: dict[tuple[str, str], set[int]] = defaultdict(set)
    for it in state.items.values():
        day = state.orders[it.order_id].order_date  # an item lives on its order's date
        revenue[day] += it.revenue
        sold[day] += it.quantity
        key = (it.category, day)
        cat_revenue[key] += it.revenue
        cat_orders[key].add(it.order_id)
        if it.returned:
            cat_returned[key].add(it.order_id)

    order_kpi: dict[str, dict[str, Decimal]] = {}
    for day, os_ in sorted(orders_by_date.items()):
        total = len(os_)
        order_kpi[day] = {
            "total_orders": Decimal(total),
            "total_revenue": revenue[day].quantize(MONEY, rounding=ROUND_HALF_UP),
            "total_items_sold": Decimal(sold[day]),
            "return_rate": _ratio(sum(o.returned for o in os_), total, RATE),
            "unique_customers": Decimal(len({o.user_id for o in os_})),
        }
    category_kpi: dict[tuple[str, str], dict[str, Decimal]] = {}
    for key in sorted(cat_revenue):
        n = len(cat_orders[key])
        category_kpi[key] = {
            "daily_revenue": cat_revenue[key].quantize(MONEY, rounding=ROUND_HALF_UP),
            "avg_order_value": _ratio(cat_revenue[key], n, MONEY),
            "avg_return_rate": _ratio(len(cat_returned[key]), n, RATE),
        }
    return order_kpi, category_kpi


def oracle(batch_dirs: list[Path], tz: str = "UTC") -> OracleResult:
    """KPIs after processing ``batch_dirs`` in order, and one validation report per batch.

    Values are ``Decimal``: money rounded to 2 places and rates to 4, ROUND_HALF_UP; counts are integral.
    """
    zone = ZoneInfo(tz)
    state = _State()
    reasons: list[dict[str, Counter[str]]] = [{} for _ in batch_dirs]
    reports = [_process_batch(Path(b), zone, state, r) for b, r in zip(batch_dirs, reasons, strict=True)]
    order_kpi, category_kpi = _kpis(state)
    return OracleResult(order_kpi, category_kpi, reports, reasons)
