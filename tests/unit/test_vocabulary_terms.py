"""The vocabulary's newer terms, each through both executors: the checks `matches` and `length`, a
dataset's row checks (`compare`), `date_of` with a grain (week, month), and a derived field of one
dataset looked up from another (a week). Valid and rejected rows with their reasons, the same through
DuckDB and petl; KPI tables keyed and filtered by the new fields; config mistakes refused at their
YAML path, saying what is allowed."""

from __future__ import annotations

import copy
import csv
import io
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pytest
import yaml

from chalicelib.config import ConfigError, PipelineConfig, parse_config
from kpipe.engine.duckdb_executor import plan_sql
from kpipe.engine.patterns import Pattern, PatternError
from kpipe.engine.plan import ENCODING, MALFORMED, compile_plan, explain_text
from kpipe.engine.vocabulary import DERIVED, lower, sql_text
from tests.unit.test_executors_equivalent import assert_same, both

CONFIG = r"""
version: 1
timezone: Europe/Berlin
datasets:
  products:
    files: products/*.csv
    key: id
    columns:
      id: {type: int, required: true, unique: true}
      sku: {type: string, checks: [{matches: '[A-Z]{2}-\d{3}', ignore_case: true}]}
      name: {type: string, checks: [{length: {min: 2, max: 5}}]}
      cost: {type: decimal, scale: 6}
      price: {type: decimal, scale: 2}
    checks:
      - compare: [cost, "<=", price]
  orders:
    files: orders/*.csv
    key: order_id
    partition_by: order_date
    columns:
      order_id: {type: int, required: true, unique: true}
      created_at: {type: datetime, required: true}
      shipped_at: {type: datetime}
      status: {type: string, checks: [{length: {max: 8}}]}
      previous_status: {type: string}
    checks:
      - compare: [shipped_at, ">=", created_at]
      - compare: [status, "!=", previous_status]
    derived:
      order_date: {date_of: created_at}
      order_week: {date_of: {field: created_at, grain: week}}
      order_month: {date_of: {field: created_at, grain: month}}
  order_items:
    files: order_items/*.csv
    key: id
    partition_by: order_date
    columns:
      id: {type: int, required: true, unique: true}
      order_id: {type: int, required: true, references: orders}
      quantity: {type: int}
    derived:
      order_date: {lookup: {via: order_id, field: order_date}}
      order_week: {lookup: {via: order_id, field: order_week}}
      order_month: {lookup: {via: order_id, field: order_month}}
kpis:
  Weekly:
    key: [order_week]
    metrics:
      orders: {count: order_id, from: orders}
      items: {count: id, from: order_items, where: [{field: order_month, matches: '2025-0[1-3]'}]}
  Monthly:
    key: [order_month]
    metrics:
      late: {count: order_id, from: orders, where: [{field: order_week, one_of: ['2025-03-31', '2024-12-30']}]}
      quantity: {sum: quantity, from: order_items}
"""

PRODUCTS = (
    "id,sku,name,cost,price\n"
    "1,AB-123,abc,1.5,2\n"  # valid
    "2,ab-123,Caf\u00e9,1,1\n"  # valid: the pattern ignores case; 4 characters
    "3,AB-12,x,1,1\n"  # two digits; one character
    "4,AB-\u0661\u0662\u0663,e\u0301e\u0301e\u0301,3.123456,3.12\n"  # \d is ASCII; 6 characters (3 combining); cost > price
    "5, AB-123 ,\U0001f600\U0001f600,,9\n"  # stripped; 2 characters; a null cost passes the comparison
    "6,AB-123x,ab,x,1\n"  # the whole value must match; cost not a decimal (so null: the comparison passes)
    "7,AB-123,ab,99999999999999999999999999999999.5,1\n"  # 32 whole digits against a scale 2: compared exactly
    "8,AB-123,ab,1,999999999999999999999999999999999999.99\n"  # valid: 36 whole digits
)
ORDERS = (
    "order_id,created_at,shipped_at,status,previous_status\n"
    "1,2025-03-02T10:00:00,2025-03-03T10:00:00,new,\n"  # a Sunday: the week of Monday 2025-02-24
    "2,2025-03-02T23:30:00Z,2025-03-01T00:00:00,new,\n"  # shipped before it was created
    "3,2025-03-31T22:30:00Z,,shipped,new\n"  # 2025-04-01 00:30 in Berlin: week 2025-03-31, month 2025-04
    "4,2025-03-01T00:00:00,soon,held,held\n"  # shipped_at not a datetime (null: passes); status unchanged
    "5,2025-01-01T12:00:00+05:00,2025-01-01T07:00:00Z,returned-late,\n"  # the same instant; week 2024-12-30; 13 characters
    "6,2025-01-01T12:00:00+05:00,2025-01-01T07:00:00Z,,\n"  # valid
)
ITEMS = "id,order_id,quantity\n1,1,2\n2,2,1\n3,3,4\n4,6,3\n5,1,1\n"
FILES = {"products": {"products/a.csv": PRODUCTS.encode()}, "orders": {"orders/a.csv": ORDERS.encode()},
         "order_items": {"order_items/a.csv": ITEMS.encode()}}
REJECTED = {
    "products": [
        ("4", "sku.matches;name.length"),
        ("5", "sku.matches;name.length;compare.cost_le_price"),
        ("7", "sku.matches;cost.type"),
        ("8", "compare.cost_le_price"),
    ],
    "orders": [
        ("3", "compare.shipped_at_ge_created_at"),
        ("5", "shipped_at.type;compare.status_ne_previous_status"),
        ("6", "status.length"),
    ],
    "order_items": [("3", "order_id.references")],
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, list[dict[str, Any]]]:
    cfg = parse_config(CONFIG)
    results = both(cfg, FILES, tmp_path_factory.mktemp("terms"))
    return cfg, results


def test_both_executors_give_the_same_rows_reasons_and_items(ran: Any) -> None:
    _cfg, (duck, ref) = ran
    assert_same(duck, ref)


@pytest.mark.parametrize("which", [0, 1], ids=["duckdb", "petl"])
def test_rejected_rows_carry_their_reasons_in_rule_order(ran: Any, which: int) -> None:
    _cfg, results = ran
    got = results[which]
    rejected = {ds: [(r["_line"], r["_reasons"]) for r in csv.DictReader(io.StringIO(got[ds]["rejected"].decode()))]
                for ds in REJECTED}
    assert rejected == REJECTED
    assert got["products"]["result"][:3] == (4, 4, [("sku.matches", 3), ("name.length", 2), ("cost.type", 1),
                                                    ("compare.cost_le_price", 2)])
    assert got["orders"]["result"][:3] == (3, 3, [("shipped_at.type", 1), ("status.length", 1),
                                                  ("compare.shipped_at_ge_created_at", 1), ("compare.status_ne_previous_status", 1)])


@pytest.mark.parametrize("which", [0, 1], ids=["duckdb", "petl"])
def test_valid_rows_and_periods(ran: Any, which: int) -> None:
    _cfg, results = ran
    got = results[which]
    assert [(p["id"], p["sku"], p["name"]) for p in got["products"]["valid"]] == [
        (1, "AB-123", "abc"), (2, "ab-123", "Caf\u00e9"), (5, "AB-123", "\U0001f600\U0001f600"), (8, "AB-123", "ab")]
    orders = [(o["order_id"], o["order_date"], o["order_week"], o["order_month"]) for o in got["orders"]["valid"]]
    assert orders == [
        (1, date(2025, 3, 2), date(2025, 2, 24), "2025-03"),
        (3, date(2025, 4, 1), date(2025, 3, 31), "2025-04"),  # Berlin's date, week and month
        (6, date(2025, 1, 1), date(2024, 12, 30), "2025-01"),  # an ISO week begun the year before
    ]
    schema = dict(got["orders"]["schema"])
    assert (str(schema["order_week"]), str(schema["order_month"])) == ("date32[day]", "string")
    # the week and month of an item are its order's, looked up
    items = [(i["id"], i["order_week"], i["order_month"]) for i in got["order_items"]["valid"]]
    assert items == [(1, date(2025, 2, 24), "2025-03"), (3, date(2025, 3, 31), "2025-04"), (4, date(2024, 12, 30), "2025-01"),
                     (5, date(2025, 2, 24), "2025-03")]
    assert dict(got["order_items"]["schema"])["order_week"] == dict(got["orders"]["schema"])["order_week"]


@pytest.mark.parametrize("which", [0, 1], ids=["duckdb", "petl"])
def test_tables_keyed_and_filtered_by_week_and_month(ran: Any, which: int) -> None:
    _cfg, results = ran
    got = results[which]
    assert got["Weekly"]["items"] == [
        {"order_week": "2024-12-30", "orders": 1, "items": 1},
        {"order_week": "2025-02-24", "orders": 1, "items": 2},
        {"order_week": "2025-03-31", "orders": 1, "items": 0},  # its month, 2025-04, is filtered out
    ]
    assert got["Monthly"]["items"] == [
        {"order_month": "2025-01", "late": 1, "quantity": 3},
        {"order_month": "2025-03", "late": 0, "quantity": 3},
        {"order_month": "2025-04", "late": 1, "quantity": 4},
    ]


def test_the_plan_lists_row_checks_after_every_column_rule_and_explains_them(ran: Any) -> None:
    cfg, _results = ran
    plan = compile_plan(cfg)
    rules = plan.dataset("orders").rules()
    assert rules[-4:] == ["compare.shipped_at_ge_created_at", "compare.status_ne_previous_status", MALFORMED, ENCODING]
    text = explain_text(plan, plan_sql(plan))
    for line in ("  sku: string; matches '[A-Z]{2}-\\d{3}'", "  name: string; length min 2, max 5",
                 "  status: string; length max 8",
                 "  check compare shipped_at >= created_at: reason compare.shipped_at_ge_created_at",
                 "  order_week = date_of {'field': 'created_at', 'grain': 'week'} (date)",
                 "  order_month = date_of {'field': 'created_at', 'grain': 'month'} (string)",
                 "  order_week = lookup orders.order_week via order_id (date)",
                 "  items = count(order_items.id) where order_month matches '2025-0[1-3]'"):
        assert line + "\n" in text
    assert "regexp_full_match(lower(" in text and "date_trunc('week'" in text and "'compare.cost_le_price'" in text


# ------------------------------------------------------------------------ the terms, Python beside SQL


@pytest.fixture(scope="module")
def con() -> Any:
    connection = duckdb.connect()
    yield connection
    connection.close()


@pytest.mark.parametrize(("pattern", "text", "ignore_case", "matches"), [
    (r"[A-Z][a-z]+", "Books", False, True),
    (r"[A-Z][a-z]+", "books", False, False),
    (r"[A-Z][a-z]+", "books", True, True),
    (r"[^a]+", "AAA", True, False),  # a negated class is negated after the case is ignored
    (r"istanbul", "\u0130stanbul", True, True),  # lower() as SQL's: one character for one
    (r"\d+", "\u0661\u0662", False, False),  # ASCII digits only
    (r"\w+", "caf\u00e9", False, False),  # ASCII word characters only
    (r"\s", "\u00a0", False, False),
    (r"\s", "\v", False, True),
    (r"a.b", "a\nb", False, False),  # `.` is no line feed
    (r"a[\s\S]b", "a\nb", False, True),
    (r"ab$\n?", "ab\n", False, False),  # `$` is the end of the value only
    (r"^ab$", "ab", False, True),
    (r"Books", "Books!", False, False),  # the whole value
    (r"\bi\w*", "istanbul", False, True),
    (r"(?x) b o o k s  # verbose", "books", False, True),
    (r"(a|ab)(c|bcd)", "abcd", False, True),
    (r"\U0001f600+", "\U0001f600\U0001f600", False, True),
])
def test_matches_means_the_same_in_python_and_duckdb(con: Any, pattern: str, text: str, ignore_case: bool, matches: bool) -> None:
    p = Pattern(pattern)
    assert p.fullmatch(lower(text) if ignore_case else text, ignore_case) is matches
    value = "lower(?)" if ignore_case else "?"
    assert con.execute(f"SELECT regexp_full_match({value}, {sql_text(p.re2(ignore_case))})", [text]).fetchone()[0] is matches


@pytest.mark.parametrize(("pattern", "why"), [
    (r"(?=a)a", "lookarounds"), (r"(?<!a)b", "lookarounds"), (r"(a)\1", "backreferences"), (r"(?P<x>a)(?P=x)", "backreferences"),
    (r"(a)?(?(1)b|c)", "conditional"), (r"(?>a)", "atomic"), (r"a++", "possessive"), (r"(?i)a", "inline flags"),
    (r"(?s:.)", "inline flags"), (r"a{1001}", "above 1000"), (r"(a{100}){11}", "multiply past 1000"), (r"[[:alpha:]]", "POSIX"),
    (r"[a", "unterminated character set"), (r"a**", "multiple repeat"), ("", "empty pattern"),
])
def test_patterns_the_executors_would_read_apart_are_refused(pattern: str, why: str) -> None:
    with pytest.raises(PatternError, match=why):
        Pattern(pattern)


@pytest.mark.parametrize("text", ["a", "\u00e9", "e\u0301", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\u4e2d\u6587",
                                  "\U0001f600x", "a\x00b", "\u0130"])
def test_length_counts_code_points_in_python_and_duckdb(con: Any, text: str) -> None:
    assert con.execute("SELECT length(?)", [text]).fetchone()[0] == len(text)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/St_Johns", "Asia/Kolkata"])
def test_date_of_grains_in_python_and_duckdb(con: Any, zone: str) -> None:
    term = DERIVED["date_of"]
    con.execute(f"SET TimeZone = {sql_text(zone)}")
    instants = [datetime(2025, 3, 2, 23, 30, tzinfo=UTC), datetime(2021, 1, 1, 12, tzinfo=UTC), datetime(2025, 12, 31, 23, 0, tzinfo=UTC),
                datetime(1, 1, 1, 12, tzinfo=UTC), datetime(9999, 12, 31, 11, tzinfo=UTC)]
    for grain in ("day", "week", "month"):
        spec = parse_config(CONFIG).datasets["orders"].derived["order_week"].date_of.model_copy(update={"grain": grain})
        python = [term.py(spec, [t], ZoneInfo(zone)) for t in instants]
        sql = term.sql(spec, ["t"])
        got = [row[0] for row in con.execute(f"SELECT {sql} FROM (SELECT unnest(?::TIMESTAMPTZ[]) AS t)", [instants]).fetchall()]
        assert got == python, grain
        assert all(isinstance(v, str if grain == "month" else date) for v in python)
    assert term.py("created_at", [instants[1]], ZoneInfo("UTC")) == date(2021, 1, 1)  # `date_of: field` is the day


# ------------------------------------------------------------------------------------ config mistakes


def problems(mutate: Any) -> list[str]:
    data = yaml.safe_load(CONFIG)
    mutate(data)
    with pytest.raises(ConfigError) as refused:
        parse_config(yaml.safe_dump(copy.deepcopy(data), sort_keys=False))
    return refused.value.problems


def column(ds: str, name: str, **spec: Any) -> Any:
    return lambda d: d["datasets"][ds]["columns"][name].update(spec)


def put(ds: str, key: str, value: Any) -> Any:
    return lambda d: d["datasets"][ds].__setitem__(key, value)


def derived(ds: str, name: str, spec: Any) -> Any:
    return lambda d: d["datasets"][ds]["derived"].__setitem__(name, spec)


def table(key: list[str], where: list[Any]) -> Any:
    return lambda d: d["kpis"].__setitem__("Extra", {"key": key, "metrics": {"n": {"count": "order_id", "from": "orders", "where": where}}})


P = "datasets.products.columns.sku.checks[0]"
ORD = "datasets.orders"


@pytest.mark.parametrize(("mutate", "expected"), [
    (column("products", "sku", checks=[{"matches": "(?=A)A"}]),
     f"{P}.matches: '(?=A)A' is not a pattern both executors read alike: lookarounds"),
    (column("products", "sku", checks=[{"matches": "(a)\\1"}]), f"{P}.matches: '(a)\\\\1' is not a pattern both executors read alike: backreferences"),
    (column("products", "sku", checks=[{"matches": "[a-"}]), f"{P}.matches: '[a-' is not a pattern both executors read alike: not a regular expression"),
    (column("products", "sku", checks=[{"matches": "(?i)ab"}]), f"{P}.matches: '(?i)ab' is not a pattern both executors read alike: inline flags"),
    (column("products", "id", checks=[{"matches": "1+"}]), "datasets.products.columns.id.checks[0].matches: applies to string fields, not to a int field"),
    (column("products", "sku", checks=[{"length": {}}]), f"{P}.length: neither min nor max is given; allowed:"),
    (column("products", "sku", checks=[{"length": {"min": 5, "max": 2}}]), f"{P}.length: min 5 is above max 2; allowed: min <= max"),
    (column("products", "sku", checks=[{"length": {"min": -1}}]), f"{P}.length.min: -1 is out of range; allowed: a value >= 0"),
    (column("products", "sku", checks=[{"length": {"max": "40"}}]), f"{P}.length.max: Input should be a valid integer"),
    (column("products", "sku", checks=[{"length": {"least": 1}}]), f"{P}.length.least: unknown key; allowed: min, max"),
    (column("products", "cost", checks=[{"length": {"max": 4}}]), "datasets.products.columns.cost.checks[0].length: applies to string fields"),
    (put("orders", "checks", [{"compare": ["shipped_at", "=>", "created_at"]}]),
     f"{ORD}.checks[0].compare[1]: '=>' is not allowed; allowed: '<', '<=', '>', '>=', '==' or '!='"),
    (put("orders", "checks", [{"compare": ["shipped", ">=", "created_at"]}]), f"{ORD}.checks[0].compare[0]: unknown column 'shipped'; allowed: one of"),
    (put("orders", "checks", [{"compare": ["created_at", "<", "order_date"]}]),
     f"{ORD}.checks[0].compare[2]: 'order_date' is a derived field, computed after the checks; allowed: a column"),
    (put("orders", "checks", [{"compare": ["order_id", "<", "created_at"]}]),
     f"{ORD}.checks[0].compare: 'order_id' is a int, 'created_at' is a datetime; allowed: two numeric columns, two datetime columns or two string columns"),
    (put("orders", "checks", [{"compare": ["status", "<", "status"]}]), f"{ORD}.checks[0].compare: compares 'status' with itself"),
    (put("orders", "checks", [{"compare": ["order_id", "<", "order_id", "x"]}]), f"{ORD}.checks[0].compare"),
    (put("orders", "checks", [{"compare": ["status", "<", "previous_status"]}, {"compare": ["status", "<", "previous_status"]}]),
     f"{ORD}.checks[1].compare: the same check as checks[0] (rule compare.status_lt_previous_status)"),
    (put("orders", "checks", [{"differ": ["status", "previous_status"]}]), f"{ORD}.checks[0].differ: unknown key; allowed: compare"),
    (derived("orders", "order_week", {"date_of": {"field": "created_at", "grain": "year"}}),
     f"{ORD}.derived.order_week.date_of.grain: 'year' is not allowed; allowed: 'day', 'week' or 'month'"),
    (derived("orders", "order_week", {"date_of": {"field": "status", "grain": "week"}}),
     f"{ORD}.derived.order_week.date_of.field: 'status' has type string; allowed types: ['datetime']"),
    (derived("orders", "order_week", {"date_of": {"grain": "week"}}), f"{ORD}.derived.order_week.date_of.field: required key is missing"),
    (derived("orders", "order_week", {"date_of": {"field": "created_at", "grian": "week"}}),
     f"{ORD}.derived.order_week.date_of.grian: unknown key; allowed: field, grain"),
    (table(["order_month"], [{"field": "order_month", "gt": 3}]), "kpis.Extra.metrics.n.where[0].gt: applies to numeric fields, not to a string field"),
    (table(["order_week"], [{"field": "order_week", "eq": "March"}]), "kpis.Extra.metrics.n.where[0].eq: 'March' is not a date"),
    (table(["order_week"], [{"field": "order_month", "matches": "(?<=2)5"}]), "kpis.Extra.metrics.n.where[0].matches: '(?<=2)5' is not a pattern"),
], ids=lambda v: None if callable(v) else v.split(":")[0].removeprefix("datasets."))
def test_config_mistakes_are_refused_at_their_path(mutate: Any, expected: str) -> None:
    found = problems(mutate)
    assert any(p.startswith(expected) for p in found), found
    assert all("; allowed" in p for p in found), found


def test_row_checks_and_grains_are_in_the_published_schema_and_reference() -> None:
    import json

    repo = Path(__file__).resolve().parents[2]
    schema = json.loads((repo / "pipeline.schema.json").read_text(encoding="utf-8"))
    assert "checks" in schema["$defs"]["Dataset"]["properties"]
    assert {"field", "grain"} <= set(schema["$defs"]["DateOfSpec"]["properties"])
    assert {"min", "max"} <= set(schema["$defs"]["LengthSpec"]["properties"])
    page = (repo / "docs" / "pipeline-reference.md").read_text(encoding="utf-8")
    assert "| `compare` | `[column, op, column]` |" in page and "`compare.<left>_<lt|le|gt|ge|eq|ne>_<right>`" in page.replace("\\|", "|")
    assert "| `matches` | `text` | string |" in page and "| `length` | `{min, max}` | string |" in page
