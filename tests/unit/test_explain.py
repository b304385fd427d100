"""`kpipe check-config --explain`: the user sees what will run, the SQL included."""

from __future__ import annotations

import duckdb
from click.testing import CliRunner

from chalicelib.config import parse_config
from kpipe.cli import main
from kpipe.engine.duckdb_executor import plan_sql
from kpipe.engine.plan import compile_plan, explain_text


def test_explain_names_every_rule_derived_field_and_metric(config_text: str) -> None:
    cfg = parse_config(config_text)
    plan = compile_plan(cfg)
    text = explain_text(plan)
    for ds in plan.datasets:
        assert f"dataset {ds.name}: files {ds.files}" in text
        for c in ds.columns:
            assert f"  {c.name}: {c.type.name}" in text
        for d in ds.derived:
            assert f"  {d.name} = " in text
    for table in plan.tables:
        assert f"table {table.name}: one item per {', '.join(table.key)}" in text
        for m in table.metrics:
            assert f"  {m.name} = {m.term.name}(" in text
    assert "sale_price: decimal(6); required, gt 0" in text
    assert "category = lookup products.category via product_id (string)" in text
    assert "returned_orders = count(orders.order_id) where is_returned eq True, not stored" in text


def test_the_printed_sql_is_what_the_executor_runs(config_text: str) -> None:
    """Each statement binds in DuckDB against empty tables of the shapes the executor gives them."""
    from kpipe.engine.duckdb_executor import DuckDBExecutor, q

    plan = compile_plan(parse_config(config_text))
    statements = plan_sql(plan)
    assert set(statements) >= {f"validate {ds.name}" for ds in plan.datasets}
    con = duckdb.connect()
    for ds in plan.datasets:
        raw = ", ".join(["_f BIGINT", "_line BIGINT", "_whole VARCHAR"] + [f"{q('c_' + c.name)} VARCHAR" for c in ds.columns])
        con.execute(f"CREATE TABLE raw_{ds.name} ({raw})")
        con.execute(f"CREATE TABLE typed_{ds.name} AS {DuckDBExecutor.typed_sql(ds, f'raw_{ds.name}')}")
        con.execute(f"CREATE TABLE checked AS {statements[f'validate {ds.name}']}")
        con.execute(f"CREATE TABLE keys_{ds.name} AS SELECT * FROM checked")
        con.execute(f"CREATE TABLE processed_{ds.name} AS SELECT * FROM checked")
        con.execute("DROP TABLE checked")
    for name, sql in statements.items():
        con.execute(f"EXPLAIN {sql}")  # binds: every table and column it names exists, with a type that fits
        assert name


def test_check_config_explain_prints_plan_and_sql() -> None:
    result = CliRunner().invoke(main, ["check-config", "--explain"])
    assert result.exit_code == 0, result.output
    assert "table OrderKPI: one item per order_date" in result.output
    assert "-- the SQL the duckdb executor runs" in result.output
    assert "regexp_full_match" in result.output and "GROUP BY" in result.output
