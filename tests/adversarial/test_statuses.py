"""Statuses scripts can trust: a batch over its reject_threshold is REJECTED and `kpipe process`
exits 3 (FAILED is 1, a refused input 2), applying nothing of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from kpipe.cli import EXIT_REJECTED, main


def test_a_rejected_batch_exits_3_and_applies_nothing(tmp_path: Path, config_text: str, write_batch: Any) -> None:
    doc = yaml.safe_load(config_text)
    doc["datasets"]["order_items"]["reject_threshold"] = 0.1
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    products = [{"id": 1, "category": "Books", "retail_price": "10"}]
    orders = [{"order_id": 1, "user_id": 1, "status": "Complete", "created_at": "2025-03-01T10:00:00"}]
    items = [{"id": 1, "order_id": 1, "product_id": 1, "sale_price": "-5", "quantity": 1, "status": ""}]
    batch = write_batch(tmp_path / "b", products, orders, items)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["process", str(batch), "--out", str(out), "--config", str(config)])
    assert result.exit_code == EXIT_REJECTED == 3, result.output
    assert "rejected (over reject_threshold, nothing applied): b-" in result.output
    assert [b["status"] for b in json.loads((out / "report.json").read_text())["batches"]] == ["REJECTED"]
    assert json.loads((out / "OrderKPI.json").read_text()) == []
