"""pipeline.yaml: one test per kind of mistake (each message names the YAML path and says what is allowed),
every problem listed at once, `kpipe check-config`, and edits that change the output with no code change."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from chalicelib.config import ConfigError, PipelineConfig, load_config, parse_config
from kpipe.cli import main
from kpipe.process import process_batches

Mutation = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def base(config_text: str) -> dict[str, Any]:
    return yaml.safe_load(config_text)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    problems = info.value.problems
    assert problems, "a ConfigError must carry its problems"
    assert all(p in str(info.value) for p in problems)
    return problems


def problems_after(base: dict[str, Any], *mutations: Mutation) -> list[str]:
    data = copy.deepcopy(base)
    for mutate in mutations:
        mutate(data)
    return problems_of(yaml.safe_dump(data, sort_keys=False))


def put(path: str, value: Any) -> Mutation:
    """Set the value at a dotted path (creating nothing but the last key)."""
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


def problem_at(problems: list[str], path: str, *allowed: str) -> str:
    """The problem reported at exactly `path`, checked to name every allowed thing."""
    found = [p for p in problems if p.startswith(f"{path}: ")]
    assert found, f"no problem at {path!r}; got {problems}"
    message = found[0]
    for word in allowed:
        assert word in message, f"{message!r} should say what is allowed ({word!r})"
    return message


COL = "datasets.order_items.columns"
ITEM_DERIVED = "datasets.order_items.derived"
ORDER_METRICS = "kpis.OrderKPI.metrics"


def test_default_config_is_valid(cfg: PipelineConfig) -> None:
    assert list(cfg.datasets) == ["products", "orders", "order_items"]
    assert set(cfg.kpis) == {"OrderKPI", "CategoryKPI"}
    assert cfg.timezone == "UTC"


# ------------------------------------------------------------------------------------------------ one per kind


def test_unknown_top_level_key(base: dict[str, Any]) -> None:
    problems = problems_after(base, put("colour", "blue"))
    problem_at(problems, "colour", "unknown key", "version", "timezone", "storage", "datasets", "kpis")


def test_unknown_key_deep_inside_a_column(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{COL}.sale_price.minimum", 3))
    problem_at(problems, f"{COL}.sale_price.minimum", "unknown key", "type", "required", "unique", "checks",
               "default", "references", "source")


def test_wrong_column_type_name(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{COL}.sale_price.type", "float"))
    problem_at(problems, f"{COL}.sale_price.type", "string", "int", "decimal", "datetime")


def test_check_with_two_operators(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{COL}.sale_price.checks", [{"gt": 0, "lt": 100}]))
    problem_at(problems, f"{COL}.sale_price.checks[0]", "exactly one", "gt", "ge", "lt", "le", "eq", "ne",
               "between", "one_of")


def test_check_with_no_operator(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{COL}.sale_price.checks", [{"ignore_case": True}]))
    problem_at(problems, f"{COL}.sale_price.checks[0]", "gt", "between", "one_of")


def test_numeric_check_on_a_string_column(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{COL}.status.checks", [{"gt": 0}]))
    problem_at(problems, f"{COL}.status.checks[0].gt", "numeric", "eq", "ne", "one_of")


def test_reference_to_an_unknown_dataset(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{COL}.product_id.references", "catalog"))
    problem_at(problems, f"{COL}.product_id.references", "catalog", "products", "orders")


def test_self_reference(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{COL}.order_id.references", "order_items"))
    problem_at(problems, f"{COL}.order_id.references", "itself", "products", "orders")


def test_reference_cycle(base: dict[str, Any]) -> None:
    cycle = put("datasets.orders.columns.first_item", {"type": "int", "references": "order_items"})
    problems = problems_after(base, cycle)
    problem_at(problems, "datasets", "cycle", "orders", "allowed")


def test_lookup_via_a_column_without_references(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{ITEM_DERIVED}.category.lookup.via", "sale_price"))
    problem_at(problems, f"{ITEM_DERIVED}.category.lookup.via", "sale_price", "order_id", "product_id")


def test_lookup_of_an_unknown_field(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{ITEM_DERIVED}.category.lookup.field", "colour"))
    problem_at(problems, f"{ITEM_DERIVED}.category.lookup.field", "colour", "category", "retail_price")


def test_derived_with_two_operations(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{ITEM_DERIVED}.revenue", {"multiply": ["sale_price", "quantity"],
                                                                     "lower": "status"}))
    problem_at(problems, f"{ITEM_DERIVED}.revenue", "exactly one", "date_of", "multiply", "lower", "equals", "lookup")


def test_derived_using_an_unknown_field(base: dict[str, Any]) -> None:
    # `revenue` feeds the KPI sums: the unknown factor must be reported, not crash the type inference.
    problems = problems_after(base, put(f"{ITEM_DERIVED}.revenue", {"multiply": ["sale_price", "qty"]}))
    problem_at(problems, f"{ITEM_DERIVED}.revenue.multiply[1]", "qty", "sale_price", "quantity")


def test_derived_using_an_unknown_field_not_feeding_a_metric(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{ITEM_DERIVED}.shout", {"lower": "colour"}))
    problem_at(problems, f"{ITEM_DERIVED}.shout.lower", "colour", "status")


def test_derived_using_a_later_derived_field(base: dict[str, Any]) -> None:
    def reorder(data: dict[str, Any]) -> None:
        derived = data["datasets"]["orders"]["derived"]
        data["datasets"]["orders"]["derived"] = {"day_copy": {"date_of": "order_date"}, **derived}
    problems = problems_after(base, reorder)
    problem_at(problems, "datasets.orders.derived.day_copy.date_of", "order_date", "earlier", "created_at")


def test_multiply_of_a_string_field(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{ITEM_DERIVED}.revenue", {"multiply": ["sale_price", "status"]}))
    problem_at(problems, f"{ITEM_DERIVED}.revenue.multiply[1]", "status", "string", "int", "decimal")


def test_date_of_a_non_datetime(base: dict[str, Any]) -> None:
    problems = problems_after(base, put("datasets.orders.derived.order_date", {"date_of": "user_id"}))
    problem_at(problems, "datasets.orders.derived.order_date.date_of", "user_id", "datetime")


def test_metric_with_two_kinds(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{ORDER_METRICS}.total_orders",
                                        {"count": "order_id", "count_distinct": "order_id", "from": "orders"}))
    problem_at(problems, f"{ORDER_METRICS}.total_orders", "sum", "count", "count_distinct", "min", "max", "ratio")


def test_metric_without_from(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{ORDER_METRICS}.total_orders", {"count": "order_id"}))
    problem_at(problems, f"{ORDER_METRICS}.total_orders", "from")


def test_ratio_with_from(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{ORDER_METRICS}.return_rate",
                                        {"ratio": ["returned_orders", "total_orders"], "from": "orders"}))
    problem_at(problems, f"{ORDER_METRICS}.return_rate", "from", "ratio")


def test_ratio_of_an_unknown_metric(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{ORDER_METRICS}.return_rate", {"ratio": ["returns", "total_orders"]}))
    problem_at(problems, f"{ORDER_METRICS}.return_rate.ratio[0]", "returns", "returned_orders", "total_orders")


def test_metric_from_an_unknown_dataset(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{ORDER_METRICS}.total_orders.from", "ordrs"))
    problem_at(problems, f"{ORDER_METRICS}.total_orders.from", "ordrs", "orders", "order_items")


def test_sum_of_a_string_field(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{ORDER_METRICS}.total_revenue.sum", "status"))
    problem_at(problems, f"{ORDER_METRICS}.total_revenue.sum", "status", "int", "decimal")


def test_where_on_an_unknown_field(base: dict[str, Any]) -> None:
    problems = problems_after(base, put(f"{ORDER_METRICS}.returned_orders.where",
                                        [{"field": "is_retruned", "eq": True}]))
    problem_at(problems, f"{ORDER_METRICS}.returned_orders.where[0].field", "is_retruned", "is_returned", "status")


def test_table_key_field_missing_from_the_from_dataset(base: dict[str, Any]) -> None:
    # CategoryKPI is keyed by category; orders have no category.
    problems = problems_after(base, put("kpis.CategoryKPI.metrics.category_orders.from", "orders"))
    problem_at(problems, "kpis.CategoryKPI.metrics.category_orders.from", "category", "orders")


def test_key_column_not_required(base: dict[str, Any]) -> None:
    problems = problems_after(base, put("datasets.orders.columns.order_id.required", False))
    problem_at(problems, "datasets.orders.columns.order_id.required", "key", "true")


def test_bad_timezone(base: dict[str, Any]) -> None:
    problems = problems_after(base, put("timezone", "Mars/Olympus_Mons"))
    problem_at(problems, "timezone", "IANA", "UTC")


def test_bad_reject_threshold(base: dict[str, Any]) -> None:
    problems = problems_after(base, put("datasets.order_items.reject_threshold", 1.5))
    problem_at(problems, "datasets.order_items.reject_threshold", "1")


def test_bad_prefix_without_trailing_slash(base: dict[str, Any]) -> None:
    problems = problems_after(base, put("storage.rejected", "rejected"))
    message = problem_at(problems, "storage.rejected")
    assert "/$" in message or "end with" in message or "ending in" in message, message


def test_not_a_mapping() -> None:
    for text in ("- datasets\n- kpis\n", "just words\n", "42\n", ""):
        problems = problems_of(text)
        problem_at(problems, "<root>", "mapping", "datasets", "kpis")


def test_invalid_yaml_syntax(config_text: str) -> None:
    broken = config_text.replace("settle_seconds: 30", "settle_seconds: [30", 1)
    assert broken != config_text
    problems = problems_of(broken)
    assert len(problems) == 1
    assert problems[0].startswith("<yaml>: ")
    assert "line" in problems[0]  # where the syntax breaks


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.problems[0].startswith("<file>: ")


# ------------------------------------------------------------------------------------------------ all at once


def test_several_schema_mistakes_are_all_listed(base: dict[str, Any]) -> None:
    problems = problems_after(
        base,
        put("colour", "blue"),
        put("timezone", "Nowhere/Never"),
        put("storage.raw", "raw-data"),
        put(f"{COL}.sale_price.type", "money"),
        put(f"{COL}.quantity.checks", [{"gt": 0, "le": 9}]),
    )
    for path in ("colour", "timezone", "storage.raw", f"{COL}.sale_price.type", f"{COL}.quantity.checks[0]"):
        problem_at(problems, path)
    assert len(problems) == 5, problems


def test_several_semantic_mistakes_are_all_listed(base: dict[str, Any]) -> None:
    problems = problems_after(
        base,
        put("datasets.orders.columns.order_id.required", False),
        put(f"{COL}.status.checks", [{"ge": 1}]),
        put(f"{ORDER_METRICS}.total_revenue.sum", "status"),
        put(f"{ORDER_METRICS}.return_rate.ratio", ["returns", "total_orders"]),
    )
    for path in ("datasets.orders.columns.order_id.required", f"{COL}.status.checks[0].ge",
                 f"{ORDER_METRICS}.total_revenue.sum", f"{ORDER_METRICS}.return_rate.ratio[0]"):
        problem_at(problems, path)


def test_schema_and_semantic_mistakes_together_are_all_listed(base: dict[str, Any]) -> None:
    """"refuses a bad file listing every problem": a typo in one place must not hide a dangling reference
    elsewhere, or the user fixes one, reloads, and only then learns about the next."""
    problems = problems_after(
        base,
        put(f"{COL}.sale_price.minimum", 3),  # schema: unknown key
        put(f"{COL}.product_id.references", "catalog"),  # cross-field: unknown dataset
    )
    problem_at(problems, f"{COL}.sale_price.minimum")
    problem_at(problems, f"{COL}.product_id.references", "catalog")


# "allowed types: ...", "allowed on strings: ..." are fine variations of "allowed: ...".
CONTRACT = re.compile(r"^(<root>|<yaml>|<file>|[A-Za-z_][\w.\[\]]*): .+; allowed[^:;]*: .+", re.DOTALL)

ALL_KINDS: list[tuple[str, Mutation]] = [
    ("unknown top-level key", put("colour", 1)),
    ("unknown column key", put(f"{COL}.sale_price.minimum", 3)),
    ("column type", put(f"{COL}.sale_price.type", "float")),
    ("two operators", put(f"{COL}.sale_price.checks", [{"gt": 0, "lt": 5}])),
    ("numeric check on string", put(f"{COL}.status.checks", [{"gt": 0}])),
    ("unknown reference", put(f"{COL}.product_id.references", "catalog")),
    ("self reference", put(f"{COL}.order_id.references", "order_items")),
    ("lookup via", put(f"{ITEM_DERIVED}.category.lookup.via", "sale_price")),
    ("lookup field", put(f"{ITEM_DERIVED}.category.lookup.field", "colour")),
    ("derived two ops", put(f"{ITEM_DERIVED}.revenue", {"multiply": ["sale_price", "quantity"], "lower": "status"})),
    ("multiply type", put(f"{ITEM_DERIVED}.revenue", {"multiply": ["sale_price", "status"]})),
    ("metric two kinds", put(f"{ORDER_METRICS}.total_orders", {"count": "order_id", "sum": "user_id",
                                                                "from": "orders"})),
    ("metric without from", put(f"{ORDER_METRICS}.total_orders", {"count": "order_id"})),
    ("ratio with from", put(f"{ORDER_METRICS}.return_rate", {"ratio": ["returned_orders", "total_orders"],
                                                              "from": "orders"})),
    ("ratio unknown", put(f"{ORDER_METRICS}.return_rate", {"ratio": ["x", "total_orders"]})),
    ("sum of string", put(f"{ORDER_METRICS}.total_revenue.sum", "status")),
    ("where unknown", put(f"{ORDER_METRICS}.returned_orders.where", [{"field": "zzz", "eq": True}])),
    ("key not required", put("datasets.orders.columns.order_id.required", False)),
    ("timezone", put("timezone", "Mars/Olympus_Mons")),
    ("reject_threshold", put("datasets.orders.reject_threshold", 1.5)),
    ("prefix", put("storage.raw", "raw-data")),
]


def test_every_problem_follows_the_documented_format(base: dict[str, Any]) -> None:
    """docs/contracts.md: each problem is `"<yaml.path>: <what is wrong>; allowed: <what is allowed>"`."""
    off_contract = []
    for kind, mutation in ALL_KINDS:
        for problem in problems_after(base, mutation):
            if not CONTRACT.match(problem):
                off_contract.append(f"{kind}: {problem}")
    assert not off_contract, "problems off the documented format:\n" + "\n".join(off_contract)


# ------------------------------------------------------------------------------------------------ check-config


def test_check_config_accepts_the_default_file(config_path: Path) -> None:
    result = CliRunner().invoke(main, ["check-config", str(config_path)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.stdout
    result = CliRunner().invoke(main, ["check-config"])  # no argument: the project's pipeline.yaml
    assert result.exit_code == 0, result.output


def test_check_config_refuses_a_bad_file_with_every_problem_on_stderr(tmp_path: Path, config_text: str) -> None:
    bad = config_text.replace("timezone: UTC", "timezone: Nowhere/Never").replace(
        "sale_price: {type: decimal,", "sale_price: {type: money,")
    assert bad.count("Nowhere/Never") == 1 and "type: money" in bad
    path = tmp_path / "pipeline.yaml"
    path.write_text(bad, encoding="utf-8")
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 2
    assert "timezone:" in result.stderr
    assert "datasets.order_items.columns.sale_price.type:" in result.stderr
    assert "valid -" not in result.stdout


def test_check_config_on_invalid_yaml_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("datasets: {products: [\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 2
    assert "<yaml>" in result.stderr


# ------------------------------------------------------------------------------------------------ edits take effect

ITEMS = [
    {"id": 1, "order_id": 1, "product_id": 1, "sale_price": "9.50", "status": "Returned"},
    {"id": 2, "order_id": 1, "product_id": 2, "sale_price": "150.00", "quantity": 2},
    {"id": 3, "order_id": 2, "product_id": 1, "sale_price": "150.01"},
]
ORDERS = [
    {"order_id": 1, "user_id": 7, "status": "Returned", "created_at": "2025-03-01T10:00:00"},
    {"order_id": 2, "user_id": 8, "status": "Complete", "created_at": "2025-03-01T12:00:00"},
]
PRODUCTS = [
    {"id": 1, "category": "Books", "retail_price": "10.00"},
    {"id": 2, "category": "Toys", "retail_price": "20.00"},
]


def edited(tmp_path: Path, text: str, old: str, new: str) -> PipelineConfig:
    assert text.count(old) == 1, f"pipeline.yaml no longer contains {old!r}"
    path = tmp_path / "pipeline.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return load_config(path)


def test_edit_adds_a_metric(tmp_path: Path, config_text: str, write_batch: Any, kpis_of: Any) -> None:
    cfg = edited(tmp_path, config_text, "      unique_customers: {count_distinct: user_id, from: orders}\n",
                 "      unique_customers: {count_distinct: user_id, from: orders}\n"
                 "      orders_counted: {count: order_id, from: orders, store: false}\n"
                 "      items_counted: {sum: quantity, from: order_items, store: false}\n"
                 "      avg_items_per_order: {ratio: [items_counted, orders_counted], round: 2}\n")
    batch = write_batch(tmp_path / "b", PRODUCTS, ORDERS, ITEMS)
    process_batches(cfg, [batch], tmp_path / "out")
    orders, _ = kpis_of(tmp_path / "out")
    assert orders["2025-03-01"]["avg_items_per_order"] == Decimal("2")  # 4 items / 2 orders
    assert "items_counted" not in orders["2025-03-01"]


def test_edit_tightens_a_rule(tmp_path: Path, config_text: str, cfg: PipelineConfig, write_batch: Any,
                              kpis_of: Any) -> None:
    batch = write_batch(tmp_path / "b", PRODUCTS, ORDERS, ITEMS)
    loose = process_batches(cfg, [batch], tmp_path / "loose")["batches"][0]["datasets"]["order_items"]
    assert (loose["rows_valid"], loose["rows_rejected"]) == (3, 0)

    tight_cfg = edited(tmp_path, config_text, "sale_price: {type: decimal, required: true, checks: [{gt: 0}]}",
                       "sale_price: {type: decimal, required: true, checks: [{gt: 0}, {le: 150}]}")
    tight = process_batches(tight_cfg, [batch], tmp_path / "tight")["batches"][0]["datasets"]["order_items"]
    assert (tight["rows_valid"], tight["rows_rejected"]) == (2, 1)
    assert tight["reasons"] == {"sale_price.le": 1}
    orders, _ = kpis_of(tmp_path / "tight")
    assert orders["2025-03-01"]["total_revenue"] == Decimal("309.50")  # 9.50 + 2 x 150.00; 150.01 is out


def test_edit_renames_a_column_mapping(tmp_path: Path, config_text: str, cfg: PipelineConfig, write_batch: Any,
                                       kpis_of: Any) -> None:
    products = [{"id": p["id"], "category": p["category"], "price": p["retail_price"]} for p in PRODUCTS]
    columns_text = "id,sku,cost,category,name,brand,price,department\n" + "".join(
        f"{p['id']},S{p['id']},1,{p['category']},N,B,{p['price']},D\n" for p in products)
    batch = write_batch(tmp_path / "b", columns_text, ORDERS, ITEMS)

    default = process_batches(cfg, [batch], tmp_path / "default")["batches"][0]["datasets"]
    assert default["products"]["reasons"] == {"retail_price.missing_column": 2}
    assert default["order_items"]["rows_valid"] == 0

    renamed = edited(tmp_path, config_text, "retail_price: {type: decimal, required: true,",
                     "retail_price: {type: decimal, source: price, required: true,")
    report = process_batches(renamed, [batch], tmp_path / "renamed")["batches"][0]["datasets"]
    assert report["products"]["rows_valid"] == 2
    assert report["order_items"]["rows_valid"] == 3
    _, cats = kpis_of(tmp_path / "renamed")
    assert cats[("Toys", "2025-03-01")]["daily_revenue"] == Decimal("300")


def test_edit_sets_a_reject_threshold(tmp_path: Path, config_text: str, write_batch: Any, kpis_of: Any) -> None:
    """A fraction of rejected rows *above* the threshold fails the batch: nothing of it reaches the KPIs."""
    cfg = edited(tmp_path, config_text, "    files: order_items/*.csv\n",
                 "    files: order_items/*.csv\n    reject_threshold: 0.25\n")
    four = [{"id": i, "order_id": 1, "product_id": 1, "sale_price": "5.00"} for i in range(1, 5)]
    at = write_batch(tmp_path / "at", PRODUCTS, ORDERS, [*four[:3], {**four[3], "sale_price": "0"}])  # 1/4
    above = write_batch(tmp_path / "above", PRODUCTS, ORDERS, [*four[:2], *({**i, "sale_price": "x"} for i in four[2:])])

    ok = process_batches(cfg, [at], tmp_path / "out")["batches"][0]
    assert ok["threshold_exceeded"] is False and ok["status"] == "SUCCEEDED"
    before = kpis_of(tmp_path / "out")
    assert before[0]["2025-03-01"]["total_revenue"] == Decimal("15.00")

    failed = process_batches(cfg, [above], tmp_path / "out")["batches"][0]
    assert failed["threshold_exceeded"] is True and failed["status"] != "SUCCEEDED"
    assert any(p.startswith("order_items") for p in failed["threshold_problems"])
    assert kpis_of(tmp_path / "out") == before  # the failed batch changed nothing
