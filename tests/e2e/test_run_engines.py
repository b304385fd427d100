"""`kpipe run --engine`: the executor chosen on the command line is the one the ECS tasks run (the
tasks read the config from the bucket, so the override travels there), with the same KPI tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_run_with_the_reference_executor(tmp_path: Path) -> None:
    batch = ROOT / "sample-data" / "batch-1"
    run = subprocess.run(
        [sys.executable, "-m", "kpipe", "run", str(batch), "--out", str(tmp_path / "run"), "--engine", "petl", "--json"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    [entry] = json.loads(run.stdout)["report"]["batches"]
    assert (entry["status"], entry["executor"]) == ("SUCCEEDED", "petl")
    local = subprocess.run(
        [sys.executable, "-m", "kpipe", "process", str(batch), "--out", str(tmp_path / "process"), "--json"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    for table in ("OrderKPI.json", "CategoryKPI.json"):
        assert (tmp_path / "run" / table).read_bytes() == (tmp_path / "process" / table).read_bytes()
