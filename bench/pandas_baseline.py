"""Whole-batch pandas implementation of KPI_SEMANTICS.md for ONE batch: the benchmark's yardstick.

Why it exists: "is the streaming petl engine fast enough?" has no answer without the obvious alternative
a data engineer would write first: read every CSV into DataFrames, apply the rules as vectorised string
ops, join, group. It is fast and memory-hungry; kpipe should land within a small factor of its speed with a
fraction of its memory. It is also a second independent implementation the tests compare to the oracle.

Exactness: money is parsed into int64 fixed-point units (10**k, k = the longest fraction seen, at most 6)
so sums are exact, as the spec demands; rounding is ROUND_HALF_UP like the test oracle. Where the spec
leaves room, this follows the same reading as ``tests/oracle.py`` (a duplicate is a later row whose key
an earlier *accepted* row already has; a fraction needs digits; datetimes need seconds).

Usage: ``python bench/pandas_baseline.py BATCH_DIR --out OUT [--tz UTC]`` writes ``OUT/OrderKPI.json``,
``OUT/CategoryKPI.json`` and ``OUT/report.json`` in the shape ``kpipe process`` uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REQUIRED = {
    "products": ["id", "category", "retail_price"],
    "orders": ["order_id", "user_id", "created_at"],
    "order_items": ["id", "order_id", "product_id", "sale_price"],
}
WANTED = {
    "products": ["id", "category", "retail_price"],
    "orders": ["order_id", "user_id", "created_at", "status"],
    "order_items": ["id", "order_id", "product_id", "sale_price", "quantity", "status"],
}
INT_RE = r"[+-]?[0-9]+"
DEC_RE = r"([+-]?)([0-9]*)(?:\.([0-9]+))?"
DT_RE = (r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
         r"(Z|[+-][0-9]{2}:[0-9]{2})?")
MAX_SCALE = 6
MONEY = Decimal("0.01")
RATE = Decimal("0.0001")


def read_dataset(batch_dir: Path, dataset: str) -> pd.DataFrame:
    """All files of a dataset as one string DataFrame (wanted columns only) plus an ``_ok`` column.

    ``_ok`` is False for rows that are out before any field rule: their file lacks a required column, or
    they hold bytes that are not UTF-8 (decoded with surrogateescape so only that row is affected).
    """
    if dataset == "products":
        files = [batch_dir / "products.csv"] if (batch_dir / "products.csv").is_file() else []
    else:
        files = sorted((p for p in (batch_dir / dataset).glob("*.csv") if p.is_file()), key=lambda p: p.name)
    frames = []
    for path in files:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8",
                             encoding_errors="surrogateescape")
        except pd.errors.EmptyDataError:
            continue
        df.columns = [str(c).lstrip("\ufeff").strip() for c in df.columns]
        df = df.loc[:, ~df.columns.duplicated()]
        ok = pd.Series(all(c in df.columns for c in REQUIRED[dataset]), index=df.index)
        out = pd.DataFrame({c: (df[c].str.strip() if c in df.columns else "") for c in WANTED[dataset]},
                           index=df.index)
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:  # rare: only then pay for a per-row scan
            bad = np.zeros(len(df), dtype=bool)
            for c in df.columns:
                bad |= df[c].str.contains("[\udc80-\udcff]", regex=True).to_numpy()
            ok &= ~bad
        out["_ok"] = ok
        frames.append(out)
    if not frames:
        return pd.DataFrame({**{c: pd.Series(dtype=str) for c in WANTED[dataset]},
                             "_ok": pd.Series(dtype=bool)})
    return pd.concat(frames, ignore_index=True)


def parse_int(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(values as int64 with 0 where invalid, valid mask)."""
    ok = s.str.fullmatch(INT_RE)
    vals = pd.to_numeric(s.where(ok, "0"), errors="coerce").fillna(0).astype("int64")
    return vals, ok


def parse_fixed(s: pd.Series) -> tuple[pd.Series, pd.Series, int]:
    """Decimals as int64 units of 10**-k (exact), their valid mask, and k."""
    ok = s.str.fullmatch(r"[+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)")
    parts = s.where(ok, "0").str.extract(DEC_RE)
    frac = parts[2].fillna("")
    k = int(frac.str.len().max()) if len(frac) else 0
    if k > MAX_SCALE:
        raise ValueError(f"fractions of {k} digits: this baseline keeps int64 units of 10**-{MAX_SCALE}")
    whole = pd.to_numeric(parts[1].replace("", "0")).astype("int64")
    frac_units = pd.to_numeric(frac.str.ljust(k, "0").replace("", "0")).astype("int64") if k else 0
    units = whole * (10**k) + frac_units
    units = units.where(parts[0] != "-", -units)
    return units.astype("int64"), ok, k


def parse_dates(s: pd.Series, tz: str) -> tuple[pd.Series, pd.Series]:
    """(ISO date strings of each timestamp in ``tz``, valid mask); naive timestamps are already in ``tz``."""
    m = s.str.extract(DT_RE)
    matched = m[0].notna()
    nums = m[[0, 1, 2, 3, 4, 5]].fillna("0").astype("int64")
    ok = matched & (nums[3] <= 23) & (nums[4] <= 59) & (nums[5] <= 59) & s.str.fullmatch(DT_RE)
    local = pd.to_datetime(
        pd.DataFrame({"year": nums[0].where(ok, 2000), "month": nums[1].where(ok, 1),
                      "day": nums[2].where(ok, 1), "hour": nums[3].where(ok, 0),
                      "minute": nums[4].where(ok, 0), "second": nums[5].where(ok, 0)}),
        errors="coerce",
    )
    ok &= local.notna()
    off = m[6].fillna("")
    has_off = off != ""
    oh = pd.to_numeric(off.str.slice(1, 3).replace("", "0"), errors="coerce").fillna(0).astype("int64")
    om = pd.to_numeric(off.str.slice(4, 6).replace("", "0"), errors="coerce").fillna(0).astype("int64")
    ok &= (oh <= 23) & (om <= 59)
    sign = np.where(off.str.startswith("-"), -1, 1)
    minutes = pd.Series(np.where(has_off & (off != "Z"), sign * (oh * 60 + om), 0), index=s.index)
    day = s.str.slice(0, 10)  # a naive timestamp's date is its own: it is already in tz
    conv_rows = has_off & ok
    if conv_rows.any():
        shifted = local[conv_rows] - pd.to_timedelta(minutes[conv_rows], unit="min")
        day[conv_rows] = shifted.dt.tz_localize("UTC").dt.tz_convert(tz).dt.strftime("%Y-%m-%d")
    return day.where(ok, ""), ok


def _accept_unique(ok: pd.Series, key: pd.Series) -> pd.Series:
    """``ok`` minus later rows whose key an earlier accepted row already has."""
    dup = pd.Series(False, index=key.index)
    dup[ok] = key[ok].duplicated(keep="first")
    return ok & ~dup


def _q(units: int, scale: int, unit: Decimal) -> Decimal:
    return Decimal(int(units)).scaleb(-scale).quantize(unit, rounding=ROUND_HALF_UP)


def _ratio(num: Decimal, den: int, unit: Decimal) -> Decimal:
    return (num / Decimal(int(den))).quantize(unit, rounding=ROUND_HALF_UP) if den else Decimal(0).quantize(unit)


def compute(batch_dir: Path, tz: str = "UTC") -> dict[str, Any]:
    """KPIs and the validation report of one batch, as plain data (Decimal numbers)."""
    report: dict[str, dict[str, int]] = {}

    # products
    p = read_dataset(batch_dir, "products")
    pid, pid_ok = parse_int(p["id"])
    price, price_ok, _ = parse_fixed(p["retail_price"])
    ok = p["_ok"] & pid_ok & (p["category"] != "") & price_ok & (price > 0)
    ok = _accept_unique(ok, pid)
    report["products"] = _counts(ok)
    categories = pd.Series(p["category"][ok].to_numpy(), index=pid[ok].to_numpy())

    # orders
    o = read_dataset(batch_dir, "orders")
    oid, oid_ok = parse_int(o["order_id"])
    uid, uid_ok = parse_int(o["user_id"])
    day, day_ok = parse_dates(o["created_at"], tz)
    ok = o["_ok"] & oid_ok & uid_ok & day_ok
    ok = _accept_unique(ok, oid)
    report["orders"] = _counts(ok)
    orders = pd.DataFrame({"order_id": oid[ok], "user_id": uid[ok], "order_date": day[ok],
                           "returned": o["status"][ok].str.lower() == "returned"})

    # order_items
    it = read_dataset(batch_dir, "order_items")
    iid, iid_ok = parse_int(it["id"])
    ioid, ioid_ok = parse_int(it["order_id"])
    ipid, ipid_ok = parse_int(it["product_id"])
    sale, sale_ok, scale = parse_fixed(it["sale_price"])
    qnull = it["quantity"] == ""
    qty, qty_ok = parse_int(it["quantity"].where(~qnull, "1"))
    ok = (it["_ok"] & iid_ok & ioid_ok & ipid_ok & sale_ok & (sale > 0) & qty_ok & (qty > 0)
          & ioid.isin(orders["order_id"]) & ipid.isin(categories.index))
    ok = _accept_unique(ok, iid)
    report["order_items"] = _counts(ok)
    items = pd.DataFrame({"order_id": ioid[ok], "quantity": qty[ok], "revenue": sale[ok] * qty[ok],
                          "returned": it["status"][ok].str.lower() == "returned",
                          "category": ipid[ok].map(categories)})
    items = items.merge(orders[["order_id", "order_date"]], on="order_id", how="left", validate="many_to_one")

    # OrderKPI
    og = orders.groupby("order_date").agg(total_orders=("order_id", "size"), returned=("returned", "sum"),
                                          unique_customers=("user_id", "nunique"))
    ig = items.groupby("order_date").agg(revenue=("revenue", "sum"), sold=("quantity", "sum"))
    og = og.join(ig, how="left").fillna(0)
    order_kpi = [
        {"order_date": d, "total_orders": int(r.total_orders), "total_revenue": _q(r.revenue, scale, MONEY),
         "total_items_sold": int(r.sold),
         "return_rate": _ratio(Decimal(int(r.returned)), int(r.total_orders), RATE),
         "unique_customers": int(r.unique_customers)}
        for d, r in og.sort_index().iterrows()
    ]

    # CategoryKPI
    keys = ["category", "order_date"]
    cg = items.groupby(keys).agg(revenue=("revenue", "sum"), orders=("order_id", "nunique"))
    rg = items[items["returned"]].groupby(keys)["order_id"].nunique().rename("returned_orders")
    cg = cg.join(rg, how="left").fillna({"returned_orders": 0})
    category_kpi = []
    for (cat, d), r in cg.sort_index().iterrows():
        rev = Decimal(int(r.revenue)).scaleb(-scale)
        category_kpi.append({
            "category": cat, "order_date": d, "daily_revenue": rev.quantize(MONEY, rounding=ROUND_HALF_UP),
            "avg_order_value": _ratio(rev, int(r.orders), MONEY),
            "avg_return_rate": _ratio(Decimal(int(r.returned_orders)), int(r.orders), RATE),
        })
    return {"OrderKPI": order_kpi, "CategoryKPI": category_kpi, "report": report}


def _counts(ok: pd.Series) -> dict[str, int]:
    valid = int(ok.sum())
    return {"rows_in": len(ok), "rows_valid": valid, "rows_rejected": len(ok) - valid}


def _num(v: Any) -> Any:
    # A float's repr round-trips any decimal of <= 15 significant digits, so JSON numbers stay exact.
    return float(v) if isinstance(v, Decimal) else v


def write_outputs(result: dict[str, Any], out: Path, batch_id: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for table in ("OrderKPI", "CategoryKPI"):
        rows = [{k: _num(v) for k, v in item.items()} for item in result[table]]
        (out / f"{table}.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    report = {"batches": [{"batch_id": batch_id, "datasets": result["report"]}]}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("batch_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tz", default="UTC")
    args = ap.parse_args(argv)
    result = compute(args.batch_dir, args.tz)
    write_outputs(result, args.out, args.batch_dir.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
