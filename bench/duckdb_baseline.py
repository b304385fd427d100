"""Plain DuckDB SQL implementation of docs/semantics.md for ONE batch: "how fast can plain DuckDB do it".

A query per step, as a data engineer would write it first: each file read with its own header's columns
as VARCHAR (``read_csv(header=true, auto_detect=false, columns={...})``: the sniffer would dominate on
many files), parsed strictly while it is read (``regexp_full_match`` before every cast: DuckDB's casts
accept ``1e3``), the first row carrying each key kept, references checked, KPIs aggregated. Money is
DECIMAL (exact); the ratios are divided in Python ``Decimal`` with ROUND_HALF_UP, as ``tests/oracle.py``
and the pandas baseline do, whose readings of the spec it shares: a later row is a duplicate when an
earlier row of a readable file carried its key, accepted or not; ``12.`` is not a decimal; datetimes
need seconds. Simplifications: ints beyond int64 and decimals beyond DECIMAL(38, 18) are rejected; rows
DuckDB cannot read (not UTF-8) are skipped, i.e. rejected without claiming a key.

Usage: ``python bench/duckdb_baseline.py BATCH_DIR --out OUT [--tz UTC]`` writes ``OUT/OrderKPI.json`` and
``OUT/CategoryKPI.json`` (nothing else: no report, no processed or rejected rows).
"""

from __future__ import annotations

import argparse
import csv
import decimal
import json
import sys
import tempfile
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb

# Each dataset's columns, parsed as they are read (a file lacking a column reads it as NULL). Values are
# taken stripped: the patterns allow surrounding whitespace, and DuckDB's casts ignore it.
PARSED = {
    "products": {"id": "int_(id)", "category": "strip_(category)", "price": "dec_(retail_price)"},
    "orders": {"order_id": "int_(order_id)", "user_id": "int_(user_id)",
               "order_date": "CAST(ts_(created_at) AS DATE)", "returned": "returned_(status)"},
    "order_items": {"id": "int_(id)", "order_id": "int_(order_id)", "product_id": "int_(product_id)",
                    "price": "dec_(sale_price)", "returned": "returned_(status)",
                    "qty": "CASE WHEN coalesce(regexp_full_match(quantity, '\\s*'), true) THEN 1 ELSE int_(quantity) END"},
}
TYPES = {"id": "BIGINT", "order_id": "BIGINT", "user_id": "BIGINT", "product_id": "BIGINT", "qty": "BIGINT",
         "category": "VARCHAR", "price": "DECIMAL(38, 18)", "order_date": "DATE", "returned": "BOOLEAN"}
COLUMNS = {
    "products": ["id", "category", "retail_price"],
    "orders": ["order_id", "user_id", "created_at", "status"],
    "order_items": ["id", "order_id", "product_id", "sale_price", "quantity", "status"],
}
REQUIRED = {"products": COLUMNS["products"], "orders": COLUMNS["orders"][:3], "order_items": COLUMNS["order_items"][:4]}
MACROS = r"""
CREATE MACRO int_(x) AS CASE WHEN regexp_full_match(x, '\s*[+-]?[0-9]+\s*') THEN TRY_CAST(x AS BIGINT) END;
CREATE MACRO dec_(x) AS CASE WHEN regexp_full_match(x, '\s*[+-]?([0-9]{1,20}(\.[0-9]{1,18})?|\.[0-9]{1,18})\s*')
    THEN TRY_CAST(x AS DECIMAL(38, 18)) END;
CREATE MACRO ts_(x) AS CASE WHEN regexp_full_match(x,
    '\s*[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})?\s*')
    THEN TRY_CAST(x AS TIMESTAMPTZ) END;
CREATE MACRO strip_(x) AS nullif(trim(x, ' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)), '');
CREATE MACRO returned_(x) AS coalesce(regexp_full_match(x, '\s*(?i:returned)\s*'), false);
"""
MONEY, RATE = Decimal("0.01"), Decimal("0.0001")
decimal.getcontext().prec = 80  # sums of 38-digit values divided exactly enough for any rounding


def lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def dataset_files(batch: Path, dataset: str) -> list[Path]:
    if dataset == "products":
        return [batch / "products.csv"] if (batch / "products.csv").is_file() else []
    return sorted((p for p in (batch / dataset).glob("*.csv") if p.is_file()), key=lambda p: p.name)


def load(con: duckdb.DuckDBPyConnection, batch: Path, dataset: str) -> None:
    """Table ``<dataset>``: ``ok_file`` and the parsed columns, files in key order and rows in line order
    (so ``rowid`` is the order of occurrence). Each file is read with its own header's columns."""
    parsed = PARSED[dataset]
    con.execute(f"CREATE TABLE {dataset} (ok_file BOOLEAN, {', '.join(f'{c} {TYPES[c]}' for c in parsed)})")
    for path in dataset_files(batch, dataset):
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
            header = next(csv.reader(fh), None)
        if not header:
            continue  # an empty file has no rows
        names: list[str] = []
        for h in header:  # a repeated name: the first column wins (as in the other implementations)
            h = h.strip()
            names.append(h if h not in names else f"{h} (column {len(names) + 1})")
        columns = "{" + ", ".join(f"{lit(n)}: 'VARCHAR'" for n in names) + "}"
        ok = all(c in names for c in REQUIRED[dataset])
        present = ", ".join(f'"{c}"' if c in names else f"NULL::VARCHAR AS {c}" for c in COLUMNS[dataset])
        con.execute(f"INSERT INTO {dataset} SELECT {ok}, {', '.join(parsed.values())} FROM (SELECT {present} "
                    f"FROM read_csv({lit(str(path))}, header=true, auto_detect=false, columns={columns}, "
                    "delim=',', quote='\"', escape='\"', ignore_errors=true))")


def compute(batch: Path, tz: str = "UTC") -> dict[str, list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="duckdb-baseline-") as tmp, duckdb.connect() as con:
        con.execute(f"SET TimeZone = {lit(tz)}")  # naive datetimes are in tz; CAST(... AS DATE) is the day in tz
        con.execute(f"SET temp_directory = {lit(tmp)}")  # where it spills, instead of ./.tmp
        con.execute(MACROS)
        for dataset in PARSED:
            load(con, batch, dataset)
        return kpis(con)


def kpis(con: duckdb.DuckDBPyConnection) -> dict[str, list[dict[str, Any]]]:
    # A row claims its key when its file is readable and the key parses: only the first claimer can be valid.
    first = "ok_file AND {key} IS NOT NULL QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY rowid) = 1"
    con.execute(f"CREATE TABLE vp AS SELECT id, category, price FROM products WHERE {first.format(key='id')}")
    con.execute("DELETE FROM vp WHERE category IS NULL OR price IS NULL OR price <= 0")
    con.execute(f"CREATE TABLE vo AS SELECT * FROM orders WHERE {first.format(key='order_id')}")
    con.execute("DELETE FROM vo WHERE user_id IS NULL OR order_date IS NULL")
    # an item needs a valid order and a valid product of this batch
    con.execute(f"""CREATE TABLE vi AS SELECT i.order_id, i.price * i.qty AS revenue, i.qty, i.returned,
            o.order_date, p.category
        FROM (SELECT * FROM order_items WHERE {first.format(key='id')}) i
        JOIN vo o ON o.order_id = i.order_id JOIN vp p ON p.id = i.product_id
        WHERE i.price > 0 AND i.qty > 0""")

    items = {d: (rev, sold) for d, rev, sold in con.execute(
        "SELECT order_date, sum(revenue), sum(qty) FROM vi GROUP BY order_date").fetchall()}
    order_kpi = []
    for d, n, ret, users in con.execute("""SELECT order_date, count(*), count(*) FILTER (WHERE returned),
            count(DISTINCT user_id) FROM vo GROUP BY order_date ORDER BY order_date""").fetchall():
        rev, sold = items.get(d, (0, 0))
        order_kpi.append({"order_date": d.isoformat(), "total_orders": n,
                          "total_revenue": Decimal(rev).quantize(MONEY, ROUND_HALF_UP), "total_items_sold": int(sold),
                          "return_rate": ratio(ret, n, RATE), "unique_customers": users})
    category_kpi = []
    for cat, d, rev, n, ret in con.execute("""SELECT category, order_date, sum(revenue), count(DISTINCT order_id),
            count(DISTINCT order_id) FILTER (WHERE returned) FROM vi GROUP BY ALL ORDER BY ALL""").fetchall():
        category_kpi.append({"category": cat, "order_date": d.isoformat(),
                             "daily_revenue": Decimal(rev).quantize(MONEY, ROUND_HALF_UP),
                             "avg_order_value": ratio(rev, n, MONEY), "avg_return_rate": ratio(ret, n, RATE)})
    return {"OrderKPI": order_kpi, "CategoryKPI": category_kpi}


def ratio(num: Any, den: int, unit: Decimal) -> Decimal:
    return (Decimal(num) / Decimal(den)).quantize(unit, ROUND_HALF_UP) if den else Decimal(0).quantize(unit)


def to_json(items: list[dict[str, Any]]) -> str:
    """A JSON list with Decimals written as exact JSON numbers (json.dumps would refuse or go through float)."""
    def value(v: Any) -> str:
        return format(v, "f") if isinstance(v, Decimal) else json.dumps(v)
    return "[\n" + ",\n".join("{" + ", ".join(f"{json.dumps(k)}: {value(v)}" for k, v in it.items()) + "}"
                              for it in items) + "\n]\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("batch_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tz", default="UTC")
    args = ap.parse_args(argv)
    result = compute(args.batch_dir, args.tz)
    args.out.mkdir(parents=True, exist_ok=True)
    for table, items in result.items():
        (args.out / f"{table}.json").write_text(to_json(items), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
