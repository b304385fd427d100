"""`kpipe process` as a user runs it: a subprocess on generated batches with invalid rows, OUT keeping state
across calls, the DESIGN.md output contract, and the numbers of the independent oracle."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kpipe.generate import generate_batches
from tests.oracle import oracle
from tests.support import read_kpis as tables

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DATASETS = ("products", "orders", "order_items")


def kpipe(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kpipe", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two generated batches: the second re-sends (and moves) some orders of the first; both hold invalid rows."""
    return generate_batches(tmp_path_factory.mktemp("gen"), 300, batches=2, invalid_fraction=0.05, seed=11, days=6)


@pytest.fixture(scope="module")
def first_call(batches: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("out")
    result = kpipe("process", batches[0], "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_out_holds_the_contract_files(first_call: tuple[Path, Any], batches: list[Path]) -> None:
    out, result = first_call
    for name in ("OrderKPI.json", "CategoryKPI.json", "report.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert list(report) == ["batches"] and len(report["batches"]) == 1
    batch = report["batches"][0]
    assert isinstance(batch["batch_id"], str) and batch["batch_id"]
    assert set(batch["datasets"]) == set(DATASETS)
    for ds in DATASETS:
        stats = batch["datasets"][ds]
        assert {"rows_in", "rows_valid", "rows_rejected", "reasons"} <= set(stats)
        assert stats["rows_in"] == stats["rows_valid"] + stats["rows_rejected"]
        assert all(isinstance(v, int) for v in stats["reasons"].values())
        rejected = out / "rejected" / batch["batch_id"] / f"{ds}.csv"
        assert rejected.is_file(), rejected
        with open(rejected, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == stats["rows_rejected"]
        assert all(r["_file"] and r["_line"].isdigit() and r["_reasons"] for r in rows), ds
    assert sum(batch["datasets"][ds]["rows_rejected"] for ds in DATASETS) > 0  # the batch has invalid rows
    assert "Validation summary" in result.stdout  # the human-readable summary
    assert not any((out / "work").iterdir())  # the scratch is gone when the command returns


def test_the_same_batch_twice_in_one_call(batches: list[Path], tmp_path: Path) -> None:
    """The second pass is the same content under the same id: it changes nothing and says so."""
    result = kpipe("process", batches[0], batches[0], "--out", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["report"]["batches"]
    assert [b["status"] for b in report] == ["SUCCEEDED", "SKIPPED"] and report[0]["seq"] == report[1]["seq"]
    assert report[1]["reason"] == f"already processed as seq {report[0]['seq']}: nothing changed"
    assert not any((tmp_path / "work").iterdir())


def test_tables_are_sorted_lists_of_items_with_json_numbers(first_call: tuple[Path, Any]) -> None:
    out, _ = first_call
    orders = json.loads((out / "OrderKPI.json").read_text(encoding="utf-8"))
    cats = json.loads((out / "CategoryKPI.json").read_text(encoding="utf-8"))
    assert orders and cats
    assert [i["order_date"] for i in orders] == sorted(i["order_date"] for i in orders)
    assert [(i["category"], i["order_date"]) for i in cats] == sorted((i["category"], i["order_date"]) for i in cats)
    for item in orders:
        assert set(item) == {"order_date", "total_orders", "total_revenue", "total_items_sold", "return_rate",
                             "unique_customers"}
        assert all(isinstance(v, int | float) and not isinstance(v, bool) for k, v in item.items() if k != "order_date")
    for item in cats:
        assert set(item) == {"category", "order_date", "daily_revenue", "avg_order_value", "avg_return_rate"}


def test_first_call_equals_the_oracle(first_call: tuple[Path, Any], batches: list[Path]) -> None:
    out, _ = first_call
    expected = oracle([batches[0]])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))["batches"][0]["datasets"]
    assert {ds: {k: report[ds][k] for k in ("rows_in", "rows_valid", "rows_rejected")} for ds in DATASETS} == (
        expected.reports[0])
    assert tables(out) == (expected.order_kpi, expected.category_kpi)


def test_second_call_adds_to_the_state(batches: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert kpipe("process", batches[0], "--out", out).returncode == 0
    second = kpipe("process", batches[1], "--out", out)
    assert second.returncode == 0, second.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert len(report["batches"]) == 1  # the report covers this call's batches
    assert report["batches"][0]["source"] == str(batches[1])
    expected = oracle(batches)
    assert tables(out) == (expected.order_kpi, expected.category_kpi)
    assert len(list((out / "rejected").iterdir())) == 2  # rejected rows of both batches are kept
    # two calls equal one call with both batches
    together = tmp_path / "together"
    assert kpipe("process", *batches, "--out", together).returncode == 0
    assert (together / "OrderKPI.json").read_bytes() == (out / "OrderKPI.json").read_bytes()
    assert (together / "CategoryKPI.json").read_bytes() == (out / "CategoryKPI.json").read_bytes()


def test_json_flag_prints_valid_json(batches: list[Path], tmp_path: Path) -> None:
    result = kpipe("process", batches[0], "--out", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["report"]["batches"][0]["datasets"].keys() == set(DATASETS)
    file_tables = {name: json.loads((tmp_path / "out" / f"{name}.json").read_text(encoding="utf-8"))
                   for name in ("OrderKPI", "CategoryKPI")}
    assert doc["tables"] == file_tables


def test_reprocessing_through_the_cli_changes_nothing(first_call: tuple[Path, Any], batches: list[Path],
                                                      tmp_path: Path) -> None:
    out, _ = first_call
    before = [(out / f"{t}.json").read_bytes() for t in ("OrderKPI", "CategoryKPI")]
    again = kpipe("process", batches[0], "--out", out)
    assert again.returncode == 0, again.stderr
    assert [(out / f"{t}.json").read_bytes() for t in ("OrderKPI", "CategoryKPI")] == before


def test_incomplete_batch_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "batch" / "orders").mkdir(parents=True)
    (tmp_path / "batch" / "products.csv").write_text("id,category,retail_price\n1,Books,10\n", encoding="utf-8")
    result = kpipe("process", tmp_path / "batch", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "order" in result.stderr


def test_bad_config_is_refused_before_any_work(batches: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "pipeline.yaml"
    bad.write_text((REPO / "pipeline.yaml").read_text(encoding="utf-8").replace("timezone: UTC", "timezone: Nope/No"),
                   encoding="utf-8")
    result = kpipe("process", batches[0], "--out", tmp_path / "out", "--config", bad)
    assert result.returncode == 2
    assert "timezone" in result.stderr
    assert not (tmp_path / "out" / "OrderKPI.json").exists()
