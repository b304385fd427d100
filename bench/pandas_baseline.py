"""Whole-batch pandas implementation of docs/semantics.md for ONE batch: the benchmark's yardstick.

Why it exists: "is the streaming petl engine fast enough?" has no answer without the obvious alternative
a data engineer would write first: read every CSV into DataFrames, apply the rules as vectorised string
ops, join, group. It is fast and memory-hungry; kpipe should land within a small factor of its speed with a
fraction of its memory. It is also a second independent implementation the tests compare to the oracle.

Exactness: money is parsed into int64 fixed-point units (10**k, k = the longest fraction seen, at most 6)
so sums are exact, as the spec demands; rounding is ROUND_HALF_UP like the test oracle. Where the spec
leaves room, this follows the same reading as ``tests/oracle.py`` (a duplicate is a later row whose key
an earlier row of the batch already carried, accepted or not; a fraction needs digits; datetimes need
seconds).

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
DEC_FULL_RE = r"[+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
DEC_RE = r"([+-]?)([0-9]*)(?:\.([0-9]+))?"
DT_RE = (r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
         r"(Z|[+-][0-9]{2}:[0-9]{2})?")
MAX_SCALE = 6
MONEY = Decimal("0.01")
RATE = Decimal("0.0001")
_WS = np.zeros(256, dtype=bool)
_WS[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True  # the ASCII characters str.strip() removes
_POW10 = 10 ** np.arange(19, dtype=np.int64)
_PAD = 32


def read_dataset(batch_dir: Path, dataset: str) -> pd.DataFrame:
    """All files of a dataset as one DataFrame of raw strings (wanted columns only) plus an ``_ok`` column.

    ``_ok`` is False for rows that are out before any field rule: their file lacks a required column, or
    they hold bytes that are not UTF-8 (decoded with surrogateescape so only that row is affected).
    """
    if dataset == "products":
        files = [batch_dir / "products.csv"] if (batch_dir / "products.csv").is_file() else []
    else:
        files = sorted((p for p in (batch_dir / dataset).glob("*.csv") if p.is_file()), key=lambda p: p.name)
    wanted = set(WANTED[dataset])
    frames = []
    for path in files:
        opts: dict[str, Any] = {"dtype": object, "keep_default_na": False, "na_filter": False,
                                "encoding": "utf-8", "encoding_errors": "surrogateescape"}
        try:
            df = pd.read_csv(path, usecols=lambda c: c.lstrip("\ufeff").strip() in wanted, **opts)
        except pd.errors.EmptyDataError:
            continue
        df.columns = [str(c).lstrip("\ufeff").strip() for c in df.columns]
        df = df.loc[:, ~df.columns.duplicated()]
        ok = np.full(len(df), all(c in df.columns for c in REQUIRED[dataset]))
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:  # rare: only then re-read every column and scan each row
            full = pd.read_csv(path, **opts)
            for c in full.columns:
                ok &= ~full[c].str.contains("[\udc80-\udcff]", regex=True).to_numpy(dtype=bool)
        out = pd.DataFrame({c: (df[c] if c in df.columns else "") for c in WANTED[dataset]}, index=df.index)
        out["_ok"] = ok
        frames.append(out)
    if not frames:
        return pd.DataFrame({**{c: pd.Series(dtype=object) for c in WANTED[dataset]},
                             "_ok": pd.Series(dtype=bool)})
    return pd.concat(frames, ignore_index=True)


class _Slow(Exception):
    """The byte-level fast path cannot decide this column (non-ASCII, very long numbers): use regexes."""


class Chars:
    """A column of strings as one flat byte buffer plus per-row offsets.

    Why: pandas' ``.str`` methods are Python loops per value (no pyarrow here), which would make this
    baseline a strawman. Checking character classes over one numpy byte array and summing them per row
    with cumulative sums decides "is this an int / decimal / ISO datetime" for a million values in a few
    numpy passes, and the digits are accumulated into int64 the same way. ASCII only; anything else raises
    ``_Slow`` and the caller falls back to exact regex code.
    """

    def __init__(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=object)
        joined = "".join(values)
        if not joined.isascii():
            raise _Slow("non-ASCII")
        n = len(values)
        lens = np.fromiter(map(len, values), dtype=np.int64, count=n)
        starts = np.zeros(n, dtype=np.int64)
        if n:
            np.cumsum(lens[:-1], out=starts[1:])
        b = np.frombuffer(joined.encode("ascii") + b"\0" * _PAD, dtype=np.uint8)
        last = b[np.maximum(starts + lens - 1, 0)]
        if ((lens > 0) & (_WS[b[starts]] | _WS[last])).any():
            values = np.array([v.strip() for v in values], dtype=object)  # rare: strip, then start over
            self.__init__(values)  # type: ignore[misc]
            return
        self.n, self.lens, self.starts, self.ends, self.b = n, lens, starts, starts + lens, b
        self.total = int(lens.sum())
        self.isdig = (b >= 48) & (b <= 57)
        self.first = b[starts]
        self.sign = (lens > 0) & ((self.first == 43) | (self.first == 45))

    def count(self, mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        cs = np.zeros(len(mask) + 1, dtype=np.int64)
        np.cumsum(mask, out=cs[1:])
        return cs[hi] - cs[lo]

    def _value(self, exponent: np.ndarray) -> np.ndarray:
        """Per row: sum of digit * 10**exponent over its characters (exponent given per character)."""
        t = self.total
        d = np.where(self.isdig[:t], self.b[:t].astype(np.int64) - 48, 0)
        contrib = np.zeros(t + 1, dtype=np.int64)
        contrib[:t] = d * _POW10[np.clip(exponent, 0, 18)]
        if self.n == 0:
            return np.zeros(0, dtype=np.int64)
        sums = np.add.reduceat(contrib, self.starts)
        sums[self.lens == 0] = 0
        return np.where(self.first == 45, -sums, sums)

    def _row_of_char(self) -> np.ndarray:
        return np.repeat(np.arange(self.n), self.lens)

    def ints(self) -> tuple[np.ndarray, np.ndarray]:
        nd = self.count(self.isdig, self.starts, self.ends)
        ok = (nd >= 1) & (nd == self.lens - self.sign)
        if (ok & (nd > 18)).any():
            raise _Slow("int beyond int64")
        row = self._row_of_char()
        exponent = self.ends[row] - 1 - np.arange(self.total)
        return self._value(exponent), ok

    def decimals(self) -> tuple[np.ndarray, np.ndarray, int]:
        isdot = self.b == 46
        nd = self.count(self.isdig, self.starts, self.ends)
        ndots = self.count(isdot, self.starts, self.ends)
        ok = (nd >= 1) & (ndots <= 1) & (nd + ndots + self.sign == self.lens)
        ok &= ~((ndots == 1) & (self.b[np.maximum(self.ends - 1, 0)] == 46))  # "12." has no fraction digits
        dpos = self.ends.copy()
        at = np.flatnonzero(isdot[: self.total])
        dpos[np.searchsorted(self.starts, at, side="right") - 1] = at
        frac = np.where(ndots == 1, self.ends - dpos - 1, 0)
        k = int(frac[ok].max()) if ok.any() else 0
        if k > MAX_SCALE or (ok & (nd - frac + k > 18)).any():
            raise _Slow("too many digits for int64 units")
        row = self._row_of_char()
        j = np.arange(self.total)
        dp = dpos[row]
        exponent = np.where(j < dp, dp - 1 - j + k, k - (j - dp))
        return self._value(exponent), ok, k

    def datetimes(self, tz: str) -> tuple[pd.Series, np.ndarray]:
        """(calendar day in ``tz`` as datetime64, valid mask) for ``YYYY-MM-DD[T ]HH:MM:SS[.f][Z|±HH:MM]``."""
        b, s, e, n = self.b, self.starts, self.ends, self.n
        m = b[s[:, None] + np.arange(19)[None, :]].astype(np.int64) if n else np.zeros((0, 19), np.int64)
        dig = (m >= 48) & (m <= 57)
        ok = (self.lens >= 19) & dig[:, [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]].all(axis=1)
        ok &= (m[:, 4] == 45) & (m[:, 7] == 45) & ((m[:, 10] == 84) | (m[:, 10] == 32))
        ok &= (m[:, 13] == 58) & (m[:, 16] == 58)
        has_z = (self.lens >= 20) & (b[np.maximum(e - 1, 0)] == 90)
        o = [b[np.maximum(e - i, 0)].astype(np.int64) for i in range(7)]  # o[i] = the i-th char from the end
        isd = [(c >= 48) & (c <= 57) for c in o]
        has_off = ((self.lens >= 25) & ((o[6] == 43) | (o[6] == 45)) & (o[3] == 58) & isd[5] & isd[4]
                   & isd[2] & isd[1])
        tail_end = self.lens - np.where(has_z, 1, np.where(has_off, 6, 0))
        ndig = self.count(self.isdig, s + np.minimum(20, self.lens), s + np.maximum(tail_end, 20))
        frac_ok = (tail_end == 19) | ((tail_end >= 21) & (b[s + np.minimum(19, self.lens)] == 46)
                                      & (ndig == tail_end - 20))
        ok &= frac_ok
        d = np.where(dig, m - 48, 0)
        year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
        parts = {"year": year, "month": d[:, 5] * 10 + d[:, 6], "day": d[:, 8] * 10 + d[:, 9],
                 "hour": d[:, 11] * 10 + d[:, 12], "minute": d[:, 14] * 10 + d[:, 15],
                 "second": d[:, 17] * 10 + d[:, 18]}
        ok &= (parts["hour"] <= 23) & (parts["minute"] <= 59) & (parts["second"] <= 59)
        oh = (o[5] - 48) * 10 + (o[4] - 48)
        om = (o[2] - 48) * 10 + (o[1] - 48)
        ok &= ~has_off | ((oh <= 23) & (om <= 59))
        safe = {"year": 2000, "month": 1, "day": 1, "hour": 0, "minute": 0, "second": 0}
        local = pd.to_datetime(pd.DataFrame({k: np.where(ok, v, safe[k]) for k, v in parts.items()}),
                               errors="coerce")
        ok &= local.notna().to_numpy()
        return _to_day(local, has_off | has_z, np.where(has_off, np.where(o[6] == 45, -1, 1) * (oh * 60 + om), 0),
                       ok, tz), ok


def _to_day(local: pd.Series, aware: np.ndarray, offset_min: np.ndarray, ok: np.ndarray, tz: str) -> pd.Series:
    """Calendar day in ``tz``: a naive timestamp is already local; an aware one is shifted to UTC, then to tz."""
    day = local.copy()
    conv = aware & ok
    if conv.any():
        utc = local[conv] - pd.to_timedelta(offset_min[conv], unit="min")
        day[conv] = utc if tz == "UTC" else utc.dt.tz_localize("UTC").dt.tz_convert(tz).dt.tz_localize(None)
    return day.dt.normalize()


def parse_int(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(values as int64, valid mask); values of invalid rows are meaningless."""
    try:
        vals, ok = Chars(s.to_numpy()).ints()
        return pd.Series(vals, index=s.index), pd.Series(ok, index=s.index)
    except _Slow:
        st = s.astype(str).str.strip()
        ok_ = st.str.fullmatch(INT_RE)
        return (pd.Series([int(v) if g else 0 for v, g in zip(st, ok_, strict=True)], index=s.index,
                          dtype=object), ok_)


def parse_fixed(s: pd.Series) -> tuple[pd.Series, pd.Series, int]:
    """Decimals as int64 units of 10**-k (exact), their valid mask, and k."""
    try:
        vals, ok, k = Chars(s.to_numpy()).decimals()
        return pd.Series(vals, index=s.index), pd.Series(ok, index=s.index), k
    except _Slow:
        pass
    # Exact at any scale: Python ints in an object column (slow, and only for unusual data).
    st = s.astype(str).str.strip()
    ok = np.array(st.str.fullmatch(DEC_FULL_RE), dtype=bool)
    parsed = [Decimal(v) if g else Decimal(0) for v, g in zip(st, ok, strict=True)]
    k = max([-int(d.as_tuple().exponent) for d in parsed] + [0])
    units = pd.Series([int(d.scaleb(k)) for d in parsed], index=s.index, dtype=object)
    return units, pd.Series(ok, index=s.index), k


def parse_dates(s: pd.Series, tz: str) -> tuple[pd.Series, pd.Series]:
    """(calendar day in ``tz`` as datetime64, valid mask); naive timestamps are already in ``tz``."""
    try:
        day, ok = Chars(s.to_numpy()).datetimes(tz)
        return pd.Series(day.to_numpy(), index=s.index), pd.Series(ok, index=s.index)
    except _Slow:
        pass
    st = s.astype(str).str.strip()
    m = st.str.extract(DT_RE)
    nums = m[[0, 1, 2, 3, 4, 5]].fillna("0").astype("int64")
    ok = np.array(st.str.fullmatch(DT_RE) & (nums[3] <= 23) & (nums[4] <= 59) & (nums[5] <= 59), dtype=bool)
    safe = [2000, 1, 1, 0, 0, 0]
    local = pd.to_datetime(pd.DataFrame({name: nums[i].where(ok, safe[i]) for i, name in
                                         enumerate(["year", "month", "day", "hour", "minute", "second"])}),
                           errors="coerce")
    off = m[6].fillna("")
    oh = pd.to_numeric(off.str.slice(1, 3).replace("", "0"), errors="coerce").fillna(0).astype("int64")
    om = pd.to_numeric(off.str.slice(4, 6).replace("", "0"), errors="coerce").fillna(0).astype("int64")
    ok &= local.notna().to_numpy() & (oh <= 23).to_numpy() & (om <= 59).to_numpy()
    sign = np.where(off.str.startswith("-"), -1, 1)
    minutes = np.where(off.isin(["", "Z"]), 0, sign * (oh * 60 + om))
    day = _to_day(local, (off != "").to_numpy(), minutes, ok, tz)
    return pd.Series(day.to_numpy(), index=s.index), pd.Series(ok, index=s.index)


def _accept_unique(ok: pd.Series, key: pd.Series, claims: pd.Series) -> pd.Series:
    """``ok`` minus later rows whose key an earlier claiming row (any row with a parseable key) had."""
    dup = pd.Series(False, index=key.index)
    dup[claims] = key[claims].duplicated(keep="first")
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
    category = p["category"].astype(str).str.strip()
    ok = p["_ok"] & pid_ok & (category != "") & price_ok & (price > 0)
    ok = _accept_unique(ok, pid, p["_ok"] & pid_ok)
    report["products"] = _counts(ok)
    categories = pd.Series(category[ok].to_numpy(), index=pid[ok].to_numpy())

    # orders
    o = read_dataset(batch_dir, "orders")
    oid, oid_ok = parse_int(o["order_id"])
    uid, uid_ok = parse_int(o["user_id"])
    day, day_ok = parse_dates(o["created_at"], tz)
    ok = o["_ok"] & oid_ok & uid_ok & day_ok
    ok = _accept_unique(ok, oid, o["_ok"] & oid_ok)
    report["orders"] = _counts(ok)
    orders = pd.DataFrame({"order_id": oid[ok], "user_id": uid[ok], "order_date": day[ok],
                           "returned": _returned(o["status"][ok])})

    # order_items
    it = read_dataset(batch_dir, "order_items")
    iid, iid_ok = parse_int(it["id"])
    ioid, ioid_ok = parse_int(it["order_id"])
    ipid, ipid_ok = parse_int(it["product_id"])
    sale, sale_ok, scale = parse_fixed(it["sale_price"])
    qnull = it["quantity"].astype(str).str.strip() == "" if _needs_strip(it["quantity"]) else it["quantity"] == ""
    qty, qty_ok = parse_int(it["quantity"].where(~qnull, "1"))
    ok = (it["_ok"] & iid_ok & ioid_ok & ipid_ok & sale_ok & (sale > 0) & qty_ok & (qty > 0)
          & ioid.isin(orders["order_id"]) & ipid.isin(categories.index))
    ok = _accept_unique(ok, iid, it["_ok"] & iid_ok)
    report["order_items"] = _counts(ok)
    items = pd.DataFrame({"order_id": ioid[ok], "quantity": qty[ok], "revenue": sale[ok] * qty[ok],
                          "returned": _returned(it["status"][ok]),
                          "category": ipid[ok].map(categories)})
    items = items.merge(orders[["order_id", "order_date"]], on="order_id", how="left", validate="many_to_one")

    # OrderKPI
    og = orders.groupby("order_date").agg(total_orders=("order_id", "size"), returned=("returned", "sum"),
                                          unique_customers=("user_id", "nunique"))
    ig = items.groupby("order_date").agg(revenue=("revenue", "sum"), sold=("quantity", "sum"))
    og = og.join(ig, how="left").fillna(0)
    order_kpi = [
        {"order_date": d.strftime("%Y-%m-%d"), "total_orders": int(r.total_orders), "total_revenue": _q(r.revenue, scale, MONEY),
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
            "category": cat, "order_date": d.strftime("%Y-%m-%d"), "daily_revenue": rev.quantize(MONEY, rounding=ROUND_HALF_UP),
            "avg_order_value": _ratio(rev, int(r.orders), MONEY),
            "avg_return_rate": _ratio(Decimal(int(r.returned_orders)), int(r.orders), RATE),
        })
    return {"OrderKPI": order_kpi, "CategoryKPI": category_kpi, "report": report}


def _returned(status: pd.Series) -> np.ndarray:
    """Case-insensitive ``== "returned"``, decided once per distinct status instead of once per row."""
    codes, uniques = pd.factorize(status)
    flags = np.array([str(u).strip().lower() == "returned" for u in uniques] + [False], dtype=bool)
    return flags[codes]  # code -1 (missing) picks the trailing False


def _needs_strip(s: pd.Series) -> bool:
    uniques = pd.unique(s)
    return any(str(u) != str(u).strip() for u in uniques)


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
