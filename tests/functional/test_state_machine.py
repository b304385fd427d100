"""The real state machine (stepfunctions/pipeline.asl.json, deployed through infra/template.yaml) executed by
moto, with the real Chalice handler fed by the S3 -> SQS pump and the real task code run by the local ECS
agent (in-process: `Emulator(backend="mock")`). Every path of the definition, and the event-driven
properties the issue asks for: duplicate storms, mid-run uploads, a failure with nothing lost and a rerun.

Expected KPIs always come from `kpipe process` on the same files, so these tests check the orchestration,
not the engine (whose semantics have their own tests).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib import trigger
from chalicelib.config import PipelineConfig, default_config_path, parse_config
from chalicelib.control import LOCK_KEY, ControlTable
from chalicelib.layout import Layout
from kpipe.engine.validate import dataset_files
from kpipe.generate import generate_batches
from kpipe.local.agent import Runner, RunResult, TaskRun
from kpipe.local.pump import chalice_handler
from kpipe.local.runner import Emulator, upload_order
from kpipe.process import process_batches

TIMEOUT = 60


def config_text(**overrides: Any) -> str:
    """The project's pipeline.yaml with no settle wait, plus `datasets.<name>.<field>` overrides."""
    data = yaml.safe_load(default_config_path().read_text())
    data["trigger"]["settle_seconds"] = 0
    for path, value in overrides.items():
        node = data
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    """One in-process emulator for the module (the stack takes a second or two to create); every test
    starts from `Emulator.reset()`: empty bucket and tables, fresh pump, its own task runner."""
    with Emulator(backend="mock") as emu:
        yield emu


_current: dict[str, Emulator] = {}


@pytest.fixture
def pipeline(emulator: Emulator) -> Callable[..., Any]:
    """`with pipeline(config_text, wrap_runner) as (emu, cfg):` a clean pipeline on the module's emulator."""

    @contextmanager
    def start(text: str | None = None, wrap_runner: Callable[[Runner], Runner] | None = None) -> Iterator[tuple[Emulator, PipelineConfig]]:
        text = text or config_text()
        cfg = parse_config(text)
        emulator.reset(wrap_runner)
        emulator.upload_config(text, Layout.from_config(cfg))
        _current["baseline"] = set(emulator.executions())  # type: ignore[assignment]
        yield emulator, cfg
        emulator.wait_idle(set(), TIMEOUT)

    return start


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small generated batches (a few invalid rows; later ones re-send and correct earlier orders)."""
    root = tmp_path_factory.mktemp("batches")
    return generate_batches(root, 30, batches=3, invalid_fraction=0.05, seed=11, files_per_dataset=2, days=4)


def expected_tables(cfg: PipelineConfig, dirs: list[Path], out: Path) -> dict[str, str]:
    process_batches(cfg, dirs, out)
    return {name: (out / f"{name}.json").read_text() for name in cfg.kpis}


def actual_tables(emu: Emulator, cfg: PipelineConfig, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    emu.save_state(out, cfg, Layout.from_config(cfg), since=time.time())
    return {name: (out / f"{name}.json").read_text() for name in cfg.kpis}


def raw_keys(emu: Emulator, prefix: str = "raw-data/") -> list[str]:
    listing = emu.client("s3").list_objects_v2(Bucket=emu.resources.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def report(emu: Emulator, batch_id: str) -> dict[str, Any]:
    body = emu.client("s3").get_object(Bucket=emu.resources.bucket, Key=f"reports/{batch_id}/report.json")["Body"]
    return json.loads(body.read())


def control(emu: Emulator) -> ControlTable:
    return ControlTable(emu.resource("dynamodb").Table(emu.resources.outputs["ControlTableName"]))


def executions(emu: Emulator) -> list[dict[str, Any]]:
    """This test's executions (the module's emulator keeps earlier tests' ones), oldest first."""
    sfn = emu.client("stepfunctions")
    mine = [sfn.describe_execution(executionArn=arn) for arn in set(emu.executions()) - _current["baseline"]]  # type: ignore[operator]
    return sorted(mine, key=lambda e: e["startDate"])


def task_families(emu: Emulator, batch_id: str | None = None) -> list[str]:
    return [run.family for run, _ in emu.agent.completed if batch_id is None or run.environment["KPIPE_BATCH_ID"] == batch_id]


def upload(emu: Emulator, cfg: PipelineConfig, batch_dir: Path) -> set[str]:
    s3, layout = emu.client("s3"), Layout.from_config(cfg)
    keys = set()
    for rel in upload_order(dataset_files(cfg, batch_dir)):
        s3.upload_file(str(batch_dir / rel), emu.resources.bucket, layout.raw_prefix + rel)
        keys.add(layout.raw_prefix + rel)
    return keys


# ------------------------------------------------------------------------------------------------
# The paths of the definition


def test_success_path_two_batches_equal_kpipe_process(pipeline: Callable[..., Any], batches: list[Path], tmp_path: Path) -> None:
    with pipeline() as (emu, cfg):
        layout = Layout.from_config(cfg)
        entries = [e for d in batches[:2] for e in emu.run_batch(d, cfg, layout, TIMEOUT)]
        assert [e["status"] for e in entries] == ["SUCCEEDED", "SUCCEEDED"]
        assert actual_tables(emu, cfg, tmp_path / "run") == expected_tables(cfg, batches[:2], tmp_path / "process")

        first = entries[0]["batch_id"]
        rep = report(emu, first)
        assert rep["status"] == "SUCCEEDED" and rep["seq"] == 1 and rep["dates"]
        assert set(rep["datasets"]) == {"products", "orders", "order_items"}
        for stats in rep["datasets"].values():
            assert stats["rows_in"] == stats["rows_valid"] + stats["rows_rejected"]
        # raw-data/ is consumed, exactly the snapshot archived under the batch, nothing left behind
        assert raw_keys(emu) == []
        archived = raw_keys(emu, f"archived/{first}/")
        assert archived == sorted(f"archived/{first}/{rel}" for rels in dataset_files(cfg, batches[0]).values() for rel in rels)
        assert control(emu).lease() is None
        assert control(emu).batch(first)["status"] == "SUCCEEDED"
        assert [e["status"] for e in executions(emu)] == ["SUCCEEDED", "SUCCEEDED"]
        assert task_families(emu, first) == ["kpipe-validate", "kpipe-transform"]


def test_failed_task_goes_through_finalize_keeps_raw_files_and_a_rerun_succeeds(pipeline: Callable[..., Any], batches: list[Path], tmp_path: Path) -> None:
    """Transform fails for real (its KPI table name points nowhere): Catch -> RecordFailure -> Failed."""
    broken = {"done": False}

    def wrap(runner: Runner) -> Runner:
        def run(task: TaskRun) -> RunResult:
            if task.family == "kpipe-transform" and not broken["done"]:
                broken["done"] = True
                names = {**json.loads(task.environment["KPIPE_KPI_TABLES"]), "OrderKPI": "NoSuchTable"}
                task = TaskRun(task.task_arn, task.family, task.command, {**task.environment, "KPIPE_KPI_TABLES": json.dumps(names)})
            return runner(task)

        return run

    with pipeline(wrap_runner=wrap) as (emu, cfg):
        layout = Layout.from_config(cfg)
        [entry] = emu.run_batch(batches[0], cfg, layout, TIMEOUT)
        bid = entry["batch_id"]
        assert entry["status"] == "FAILED"
        [execution] = executions(emu)
        assert execution["status"] == "FAILED" and execution["error"] == "Kpipe.BatchFailed"
        rep = report(emu, bid)
        assert rep["status"] == "FAILED" and rep["failure"]["Error"] == "Kpipe.TaskFailed"
        assert "ResourceNotFoundException" in rep["failure"]["Cause"]
        assert len(raw_keys(emu)) == sum(len(v) for v in dataset_files(cfg, batches[0]).values())  # nothing lost
        assert control(emu).batch(bid)["status"] == "FAILED"
        assert control(emu).lease() is None
        assert task_families(emu, bid) == ["kpipe-validate", "kpipe-transform", "kpipe-finalize"]

        # The rerun the API offers (POST /batches/{id}/rerun) on the very same files.
        cfg_loader = lambda: cfg  # noqa: E731
        outcome = trigger.rerun(emu.client("s3"), emu.client("stepfunctions"), emu.resources.bucket, bid, cfg_loader,
                                emu.resources.state_machine_arn)
        emu.wait_idle(set(), TIMEOUT)
        assert outcome.execution_name == f"{bid}-r1"
        assert report(emu, bid)["status"] == "SUCCEEDED"
        assert "failure" not in report(emu, bid)
        assert raw_keys(emu) == []
        assert control(emu).batch(bid)["status"] == "SUCCEEDED"
        assert actual_tables(emu, cfg, tmp_path / "run") == expected_tables(cfg, batches[:1], tmp_path / "process")


def test_crashed_task_is_reported_by_the_agent_and_transient_errors_are_retried(pipeline: Callable[..., Any], batches: list[Path], tmp_path: Path) -> None:
    """Validate reports Kpipe.Transient once (retried by the state machine); Transform then dies without
    reporting (exit 137, as an OOM kill), which the agent reports as Kpipe.TaskCrashed -> failure branch."""
    calls: dict[str, int] = {}

    def wrap(runner: Runner) -> Runner:
        def run(task: TaskRun) -> RunResult:
            calls[task.family] = calls.get(task.family, 0) + 1
            if task.family == "kpipe-validate" and calls[task.family] == 1:
                sfn = emu_ref["emu"].client("stepfunctions")
                sfn.send_task_failure(taskToken=task.task_token, error="Kpipe.Transient", cause="injected throttling")
                return RunResult(3)
            if task.family == "kpipe-transform":
                return RunResult(137, "Killed")
            return runner(task)

        return run

    emu_ref: dict[str, Emulator] = {}
    with pipeline(wrap_runner=wrap) as (emu, cfg):
        emu_ref["emu"] = emu
        [entry] = emu.run_batch(batches[0], cfg, Layout.from_config(cfg), TIMEOUT)
        assert entry["status"] == "FAILED"
        assert calls == {"kpipe-validate": 2, "kpipe-transform": 1, "kpipe-finalize": 1}
        rep = report(emu, entry["batch_id"])
        assert rep["failure"]["Error"] == "Kpipe.TaskCrashed"
        assert "exited with code 137" in rep["failure"]["Cause"]
        assert raw_keys(emu)  # kept for a rerun


def test_reject_threshold_fails_gracefully_and_quarantines_the_batch(pipeline: Callable[..., Any], tmp_path: Path) -> None:
    [dirty] = generate_batches(tmp_path / "dirty", 40, invalid_fraction=0.3, seed=5, files_per_dataset=1, days=3)
    text = config_text(**{"datasets.orders.reject_threshold": 0.05})
    with pipeline(text) as (emu, cfg):
        [entry] = emu.run_batch(dirty, cfg, Layout.from_config(cfg), TIMEOUT)
        bid = entry["batch_id"]
        assert entry["status"] == "REJECTED"
        [execution] = executions(emu)
        assert execution["status"] == "FAILED" and execution["error"] == "Kpipe.ThresholdExceeded"
        rep = report(emu, bid)
        assert rep["status"] == "FAILED" and rep["stage"] == "rejected"
        assert any(p.startswith("orders:") for p in rep["reasons"])
        assert raw_keys(emu) == []
        assert len(raw_keys(emu, f"quarantine/{bid}/")) == sum(len(v) for v in dataset_files(cfg, dirty).values())
        assert raw_keys(emu, f"rejected/{bid}/orders.csv") == [f"rejected/{bid}/orders.csv"]
        assert task_families(emu, bid) == ["kpipe-validate", "kpipe-finalize"]
        tables = actual_tables(emu, cfg, tmp_path / "run")
        assert all(json.loads(t) == [] for t in tables.values())
        assert control(emu).lease() is None


def test_an_execution_for_files_already_processed_is_skipped(pipeline: Callable[..., Any], batches: list[Path], tmp_path: Path) -> None:
    with pipeline() as (emu, cfg):
        [entry] = emu.run_batch(batches[0], cfg, Layout.from_config(cfg), TIMEOUT)
        bid = entry["batch_id"]
        before = actual_tables(emu, cfg, tmp_path / "before")
        sfn = emu.client("stepfunctions")
        sfn.start_execution(
            stateMachineArn=emu.resources.state_machine_arn,
            name=f"{bid}-again",
            input=json.dumps({"batch_id": bid, "manifest_key": f"reports/{bid}/manifest.json", "settle_seconds": 0}),
        )
        emu.wait_idle(set(), TIMEOUT)
        again = next(e for e in executions(emu) if e["name"] == f"{bid}-again")
        assert again["status"] == "SUCCEEDED"
        assert json.loads(again["output"])["validation"]["status"] == "skipped"
        assert report(emu, bid)["status"] == "SUCCEEDED"  # a skip never overwrites a finished report
        assert task_families(emu, bid) == ["kpipe-validate", "kpipe-transform", "kpipe-validate"]
        assert actual_tables(emu, cfg, tmp_path / "after") == before


# ------------------------------------------------------------------------------------------------
# Serialisation and the lease


def test_the_lease_serialises_concurrent_executions(pipeline: Callable[..., Any], batches: list[Path], tmp_path: Path) -> None:
    """Two executions started at once over the same raw-data/: one processes, the other waits for the
    lease, then finds everything archived and ends SKIPPED. Their tasks never overlap."""
    spans: list[tuple[str, float, float]] = []

    def wrap(runner: Runner) -> Runner:
        def run(task: TaskRun) -> RunResult:
            start = time.monotonic()
            result = runner(task)
            spans.append((task.environment["KPIPE_BATCH_ID"], start, time.monotonic()))
            return result

        return run

    with pipeline(wrap_runner=wrap) as (emu, cfg):
        emu.pump.stop()  # no trigger: the two executions are started by hand
        upload(emu, cfg, batches[0])
        sfn = emu.client("stepfunctions")
        for name in ("b-concurrent-1", "b-concurrent-2"):
            sfn.start_execution(
                stateMachineArn=emu.resources.state_machine_arn,
                name=name,
                input=json.dumps({"batch_id": name, "manifest_key": "", "settle_seconds": 0}),
            )
        emu.wait_idle(set(), TIMEOUT)
        outputs = {e["name"]: json.loads(e["output"]) for e in executions(emu)}
        assert all(e["status"] == "SUCCEEDED" for e in executions(emu))
        statuses = sorted(o.get("transform", {}).get("status") or o["validation"]["status"] for o in outputs.values())
        assert statuses == ["skipped", "succeeded"]
        ordered = sorted(spans, key=lambda s: s[1])
        assert all(a[2] <= b[1] for a, b in itertools.pairwise(ordered))
        assert actual_tables(emu, cfg, tmp_path / "run") == expected_tables(cfg, batches[:1], tmp_path / "process")


def test_a_lease_left_by_an_ended_execution_is_broken(pipeline: Callable[..., Any], batches: list[Path]) -> None:
    """An owner that ended without releasing (stopped, timed out) must not block the pipeline forever."""
    with pipeline() as (emu, cfg):
        sfn = emu.client("stepfunctions")
        other = sfn.create_state_machine(
            name="ended-owner", roleArn="arn:aws:iam::123456789012:role/x",
            definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}),
        )
        ended = sfn.start_execution(stateMachineArn=other["stateMachineArn"], name="ended-owner")["executionArn"]
        deadline = time.monotonic() + TIMEOUT
        while sfn.describe_execution(executionArn=ended)["status"] == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert control(emu).acquire(ended, "x")  # the owner ended without releasing
        [entry] = emu.run_batch(batches[0], cfg, Layout.from_config(cfg), TIMEOUT)
        assert entry["status"] == "SUCCEEDED"
        assert control(emu).lease() is None
        assert emu.resource("dynamodb").Table(emu.resources.outputs["ControlTableName"]).get_item(Key={"pk": LOCK_KEY}).get("Item") is None


# ------------------------------------------------------------------------------------------------
# Event-driven properties, through the handler


def test_duplicate_event_storm_processes_the_batch_once(pipeline: Callable[..., Any], batches: list[Path], tmp_path: Path) -> None:
    """10 concurrent deliveries of every ObjectCreated event: one execution processes
    the batch; every other event is a duplicate or finds raw-data/ empty."""
    with pipeline() as (emu, cfg):
        emu.pump.stop()
        keys = upload(emu, cfg, batches[0])
        handler = chalice_handler()
        events = [
            {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": emu.resources.bucket}, "object": {"key": key.replace("/", "%2F")}}}]}
            for key in sorted(keys)
        ]
        results: list[Any] = []
        errors: list[Exception] = []

        def storm() -> None:
            for event in events:
                try:
                    results.append(handler(event, None))
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(exc)

        threads = [threading.Thread(target=storm) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        statuses = [o["status"] for r in results for o in r["outcomes"]]
        assert statuses.count("started") == 1
        emu.wait_idle(set(), TIMEOUT)
        [execution] = executions(emu)
        assert execution["status"] == "SUCCEEDED"
        assert raw_keys(emu) == []
        assert actual_tables(emu, cfg, tmp_path / "run") == expected_tables(cfg, batches[:1], tmp_path / "process")


def test_a_file_uploaded_mid_run_is_processed_once_by_a_later_run(pipeline: Callable[..., Any], batches: list[Path], tmp_path: Path) -> None:
    """An orders file lands after batch 1's snapshot (between validate and transform): batch 1's run leaves
    it in raw-data/, the execution its event starts finds no complete batch and is SKIPPED, and the next
    batch's run processes it, once. KPIs equal `kpipe process` of batch 1, then batch 2 plus that file."""
    late_source = batches[2] / "orders"
    late_file = sorted(late_source.glob("*.csv"))[0]
    late_key = "raw-data/orders/zz-late.csv"
    state = {"uploaded": False}

    def wrap(runner: Runner) -> Runner:
        def run(task: TaskRun) -> RunResult:
            emu = emu_ref["emu"]
            if task.family == "kpipe-transform" and not state["uploaded"]:
                # After batch 1's snapshot, before its transform archives it: the late file's event finds
                # a complete batch (batch 1 is still there) and starts an execution, which must wait.
                state["uploaded"] = True
                emu.client("s3").upload_file(str(late_file), emu.resources.bucket, late_key)
                deadline = time.monotonic() + TIMEOUT
                while not emu.pump.has_handled({late_key}) and time.monotonic() < deadline:
                    time.sleep(0.05)
            return runner(task)

        return run

    emu_ref: dict[str, Emulator] = {}
    with pipeline(wrap_runner=wrap) as (emu, cfg):
        emu_ref["emu"] = emu
        layout = Layout.from_config(cfg)
        [first] = emu.run_batch(batches[0], cfg, layout, TIMEOUT)
        emu.wait_idle({late_key}, TIMEOUT)
        assert first["status"] == "SUCCEEDED"
        assert raw_keys(emu) == [late_key]  # not in batch 1's snapshot: left for a later run
        skipped = [e for e in executions(emu) if json.loads(e.get("output") or "{}").get("validation", {}).get("status") == "skipped"]
        assert len(skipped) == 1
        [second] = emu.run_batch(batches[1], cfg, layout, TIMEOUT)
        assert second["status"] == "SUCCEEDED"
        assert raw_keys(emu) == []
        assert raw_keys(emu, f"archived/{second['batch_id']}/orders/zz-late.csv") == [f"archived/{second['batch_id']}/orders/zz-late.csv"]
        run_tables = actual_tables(emu, cfg, tmp_path / "run")

    merged = tmp_path / "batch-2-plus-late"
    import shutil

    shutil.copytree(batches[1], merged)
    shutil.copyfile(late_file, merged / "orders" / "zz-late.csv")
    assert run_tables == expected_tables(cfg, [batches[0], merged], tmp_path / "process")


# ------------------------------------------------------------------------------------------------
# Scale-out: the Map state over groups of dates


def test_a_big_batch_fans_the_kpi_recompute_out_over_groups_of_dates(pipeline: Callable[..., Any], batches: list[Path], tmp_path: Path) -> None:
    """transform indexes, a Map runs one recompute task per group of dates (scale.transform_concurrency),
    then a finish task archives: the KPIs equal the single-task path's (`kpipe process`)."""
    steps: list[str] = []

    def wrap(runner: Runner) -> Runner:
        def run(task: TaskRun) -> RunResult:
            if task.family == "kpipe-transform":
                steps.append(task.environment.get("KPIPE_TRANSFORM_STEP", "auto") + task.environment.get("KPIPE_DATE_GROUP", ""))
                task = TaskRun(task.task_arn, task.family, task.command, {**task.environment, "KPIPE_FANOUT_MIN_ROWS": "0"})
            return runner(task)

        return run

    text = config_text(**{"scale.transform_concurrency": 3})
    with pipeline(text, wrap) as (emu, cfg):
        entries = [e for d in batches[:2] for e in emu.run_batch(d, cfg, Layout.from_config(cfg), TIMEOUT)]
        assert [e["status"] for e in entries] == ["SUCCEEDED", "SUCCEEDED"]
        assert sorted(steps) == sorted(["auto", "recompute0", "recompute1", "recompute2", "finish"] * 2)
        assert report(emu, entries[1]["batch_id"])["fanout"] == {"date_groups": 3}
        assert raw_keys(emu) == []
        assert actual_tables(emu, cfg, tmp_path / "run") == expected_tables(cfg, batches[:2], tmp_path / "process")
