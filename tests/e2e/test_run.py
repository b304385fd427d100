"""`kpipe run` end to end, as a user runs it: a subprocess that starts the embedded emulator (moto server),
deploys the stack, uploads each batch file by file, and lets S3 events, the Chalice handler, the state
machine and the ECS task subprocesses do the rest. Its tables must equal `kpipe process` on the same
batches, byte for byte, over several batches; and OUT keeps state across calls, as `kpipe process`'s does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.config import default_config_path, load_config
from kpipe.generate import generate_batches
from kpipe.local.runner import run_batches
from kpipe.process import process_batches

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("in")
    return generate_batches(root, 40, batches=3, invalid_fraction=0.05, seed=23, files_per_dataset=2, days=3)


def kpipe(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kpipe", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )


def tables(out: Path) -> dict[str, str]:
    return {name: (out / f"{name}.json").read_text() for name in ("OrderKPI", "CategoryKPI")}


def test_kpipe_run_equals_kpipe_process_on_two_batches_in_a_row(batches: list[Path], tmp_path: Path) -> None:
    b1, b2, _ = batches
    run_out, process_out = tmp_path / "run", tmp_path / "process"
    result = kpipe("run", b1, b2, "--out", run_out, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)["report"]
    expected = process_batches(load_config(default_config_path()), [b1, b2], process_out)

    assert tables(run_out) == tables(process_out)
    assert json.loads(tables(run_out)["OrderKPI"])  # not trivially empty
    assert [b["status"] for b in report["batches"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert [b["datasets"] for b in report["batches"]] == [b["datasets"] for b in expected["batches"]]
    assert [b["source"] for b in report["batches"]] == [str(b1), str(b2)]
    assert json.loads((run_out / "report.json").read_text()) == report
    for batch in report["batches"]:
        rejected = run_out / "rejected" / batch["batch_id"]
        assert sorted(p.name for p in rejected.glob("*.csv")) == ["order_items.csv", "orders.csv", "products.csv"]
    assert "execution" in result.stderr and "succeeded" in result.stderr  # progress goes to stderr
    assert (run_out / "logs" / "lambda.log").stat().st_size > 0  # the handler's JSON logs, off stdout


def test_out_keeps_state_across_calls(batches: list[Path], tmp_path: Path) -> None:
    """A second call with the same OUT adds its batches to the first's (on the in-process backend: the
    same runner, stack, handler and tasks, without the subprocesses)."""
    cfg = load_config(default_config_path())
    run_out, process_out = tmp_path / "run", tmp_path / "process"
    first = run_batches([batches[0]], run_out, backend="mock", settle_seconds=0)
    second = run_batches([batches[2]], run_out, backend="mock", settle_seconds=0)
    process_batches(cfg, [batches[0], batches[2]], process_out)
    assert tables(run_out) == tables(process_out)
    assert [len(first["batches"]), len(second["batches"])] == [1, 1]
    assert second["batches"][0]["seq"] == 2  # the processed store came back from OUT
