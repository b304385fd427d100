"""`kpipe plan`: a dry run against OUT that writes nothing there and predicts exactly what
`kpipe process` of the same batch then changes, item for item."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from chalicelib.config import PipelineConfig
from kpipe.cli import main
from kpipe.dry_run import table_changes
from kpipe.process import process_batches
from kpipe.tables import dumps, load_table

SAMPLES = Path(__file__).resolve().parents[2] / "sample-data"


def fingerprint(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_plan_writes_nothing_and_equals_what_processing_then_does(tmp_path: Path, cfg: PipelineConfig) -> None:
    out = tmp_path / "out"
    process_batches(cfg, [SAMPLES / "batch-1"], out)
    untouched = fingerprint(out)
    result = CliRunner().invoke(main, ["plan", str(SAMPLES / "batch-2"), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout, parse_float=Decimal)
    assert fingerprint(out) == untouched

    before = {name: load_table(out / f"{name}.json") for name in cfg.kpis}
    report = process_batches(cfg, [SAMPLES / "batch-2"], out)["batches"][0]
    for name, spec in cfg.kpis.items():
        assert plan["tables"][name] == json.loads(dumps(table_changes(before[name], load_table(out / f"{name}.json"), spec.key)), parse_float=Decimal)
    assert sum(len(plan["tables"][n]["changed"]) + len(plan["tables"][n]["created"]) for n in cfg.kpis) > 0
    for name, stats in report["datasets"].items():
        assert plan["datasets"][name] == {k: stats[k] for k in ("rows_in", "rows_valid", "rows_rejected", "reasons")}

    again = CliRunner().invoke(main, ["plan", str(SAMPLES / "batch-2"), "--out", str(out)])  # already processed
    assert again.exit_code == 0 and "already processed as seq 2: nothing changed" in again.output
    replay = json.loads(CliRunner().invoke(main, ["plan", str(SAMPLES / "batch-1"), "--out", str(out), "--json"]).stdout)
    assert replay["status"] == "SKIPPED"
    assert all(changes == {"created": [], "changed": [], "deleted": []} for changes in replay["tables"].values())
