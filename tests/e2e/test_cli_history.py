"""`kpipe history`: every batch processed into an OUT, across calls, with the counts of its report."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from chalicelib.config import PipelineConfig
from kpipe.cli import main
from kpipe.history import sparkline
from kpipe.process import process_batches

SAMPLES = Path(__file__).resolve().parents[2] / "sample-data"


def test_history_lists_every_batch_of_every_call_with_its_report_counts(tmp_path: Path, cfg: PipelineConfig) -> None:
    out = tmp_path / "out"
    first = process_batches(cfg, [SAMPLES / "batch-1"], out)["batches"]
    later = process_batches(cfg, [SAMPLES / "batch-2", SAMPLES / "batch-1"], out)["batches"]  # report.json: this call only
    result = CliRunner().invoke(main, ["history", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    lines = json.loads(result.stdout)
    assert [(h["batch_id"], h["status"], h["seq"]) for h in lines] == [(b["batch_id"], b["status"], b.get("seq")) for b in first + later]
    for line, report in zip(lines, first + later, strict=True):
        assert line["datasets"] == {n: {k: s[k] for k in ("rows_in", "rows_valid", "rows_rejected", "reasons")} for n, s in report["datasets"].items()}
    rule = CliRunner().invoke(main, ["history", "--out", str(out), "--dataset", "order_items", "--rule", "sale_price.gt", "--json"])
    narrowed = json.loads(rule.stdout)
    assert narrowed and all(list(h["datasets"]) == ["order_items"] and list(h["datasets"]["order_items"]["reasons"]) == ["sale_price.gt"] for h in narrowed)
    table = CliRunner().invoke(main, ["history", "--out", str(out)])
    assert table.exit_code == 0 and "rejected fraction, oldest to newest" in table.output


def test_sparkline_scales_to_the_largest_value() -> None:
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([0.0, 0.0]) == "▁▁"
