"""pipeline.yaml may change between batches: added columns, derived fields, checks, metrics and tables.
Stored rows are read by column name (a column they lack is null), derived fields are computed again
from their stored columns, and every date a batch touches is computed under the config in force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chalicelib.config import parse_config
from kpipe.process import process_batches

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample-data"


def edited(text: str) -> str:
    """The shipped config, edited as the issue's user did: a new column, a new derived field, new metrics."""
    text = text.replace(
        "      status: {type: string}\n    derived:\n      order_date: {date_of: created_at}",
        "      status: {type: string}\n      num_of_item: {type: int}\n    derived:\n      order_date: {date_of: created_at}",
    )
    text = text.replace("      revenue: {multiply: [sale_price, quantity]}", "      revenue: {multiply: [sale_price, quantity]}\n      status_lc: {lower: status}")
    return text.replace(
        "      unique_customers: {count_distinct: user_id, from: orders}",
        "      unique_customers: {count_distinct: user_id, from: orders}\n"
        "      ordered_items: {sum: num_of_item, from: orders}\n"
        "      returned_items: {count: id, from: order_items, where: [{field: status_lc, eq: returned}]}",
    )


@pytest.mark.parametrize("executor", ["duckdb", "petl"])
def test_a_column_and_a_derived_field_added_once_data_exists(tmp_path: Path, config_text: str, executor: str) -> None:
    before, after = parse_config(config_text), parse_config(edited(config_text))
    out = tmp_path / "out"
    process_batches(before, [SAMPLE / "batch-1"], out, executor=executor)
    report = process_batches(after, [SAMPLE / "batch-2"], out, executor=executor)
    assert report["batches"][0]["status"] == "SUCCEEDED"
    fresh = tmp_path / "fresh"
    process_batches(after, [SAMPLE / "batch-1", SAMPLE / "batch-2"], fresh, executor=executor)
    changed = {i["order_date"]: i for i in json.loads((out / "OrderKPI.json").read_text())}
    full = {i["order_date"]: i for i in json.loads((fresh / "OrderKPI.json").read_text())}
    assert changed.keys() == full.keys()
    for day, item in full.items():
        # a derived field is computed again from the stored columns: as if the config had always said so
        assert changed[day]["returned_items"] == item["returned_items"], day
        assert {k: v for k, v in changed[day].items() if k != "ordered_items"} == {k: v for k, v in item.items() if k != "ordered_items"}
    # a new column is null in the rows stored before it was declared (a backfill from the raw files brings it)
    assert sum(i["ordered_items"] for i in changed.values()) < sum(i["ordered_items"] for i in full.values())


def test_a_column_removed_once_data_exists(tmp_path: Path, config_text: str) -> None:
    first = parse_config(edited(config_text))
    out = tmp_path / "out"
    process_batches(first, [SAMPLE / "batch-1"], out)
    report = process_batches(parse_config(config_text), [SAMPLE / "batch-2"], out)
    assert report["batches"][0]["status"] == "SUCCEEDED"
    items = json.loads((out / "OrderKPI.json").read_text())
    assert items and all("returned_items" not in i for i in items if i["order_date"] in report["batches"][0]["dates"])


def test_check_config_against_says_what_needs_a_backfill(tmp_path: Path, config_text: str) -> None:
    from click.testing import CliRunner

    from kpipe.cli import main

    out = tmp_path / "out"
    process_batches(parse_config(config_text), [SAMPLE / "batch-1"], out)
    edited_path = tmp_path / "pipeline.yaml"
    edited_path.write_text(edited(config_text))
    result = CliRunner().invoke(main, ["check-config", str(edited_path), "--against", str(out)])
    assert result.exit_code == 0, result.output
    assert "datasets.orders.columns.num_of_item: new column" in result.output
    assert "datasets.order_items.derived.status_lc: new derived field" in result.output
    assert "kpis.OrderKPI: changed table" in result.output
    same = CliRunner().invoke(main, ["check-config", "--against", str(out)])
    assert "no change since the last batch" in same.output
