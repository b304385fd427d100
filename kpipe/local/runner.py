"""`kpipe run` and `kpipe serve`: the whole event-driven pipeline on the embedded emulator.

    Emulator: moto server (this process) -> stack from infra/template.yaml -> S3->SQS pump -> Chalice
    handler (in-process) -> Step Functions (moto, the real ASL) -> local ECS agent -> task subprocesses

`run_batches` uploads `pipeline.yaml` to `config/`, then each batch directory one file at a time (as a user
would), waits until the events are handled and no execution runs, and moves on; at the end it writes OUT
like `kpipe process` does (KPI tables, report, rejected rows). OUT keeps state across calls: its
`processed/` store and KPI tables are loaded into the emulator first and saved back at the end, so a later
call adds its batches to what is there (and OUT is interchangeable with `kpipe process`'s).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import yaml

from chalicelib.config import PipelineConfig, default_config_path, load_config, parse_config
from chalicelib.kpi_store import KpiStore
from chalicelib.layout import Layout
from kpipe.engine.store import TRANSFER_THREADS, S3Store
from kpipe.engine.validate import dataset_files
from kpipe.local import shims
from kpipe.local.agent import EcsAgent, InProcessRunner, Runner, RunResult, SubprocessRunner, TaskRun
from kpipe.local.pump import S3EventPump, chalice_handler
from kpipe.local.resources import Resources, create_resources
from kpipe.local.server import REGION, MotoServer, emulator_environment, environ, pointed_at
from kpipe.tables import load_table, save_table

Progress = Callable[[str], None]
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SETTLE_SECONDS = 1
# chalice has no `python -m chalice`; call its click entry point with this interpreter.
_CHALICE_MAIN = "import sys; from chalice.cli import main; sys.argv[0] = 'chalice'; sys.exit(main())"


class RunError(RuntimeError):
    """The local run could not complete (a batch directory is incomplete, or the pipeline did not settle)."""


class Emulator:
    """Everything `kpipe run` and `kpipe serve` start, as one context manager.

    `backend="server"` (the commands): moto server on a port, tasks as subprocesses.
    `backend="mock"` (tests): moto's in-process mock, tasks called in threads (InProcessRunner); the same
    stack, state machine, pump, handler and agent, minus the HTTP hops and interpreter start-ups.
    `wrap_runner` lets a test wrap the task runner (inject a crash, act between two tasks). `cfg`: the
    pipeline.yaml whose KPI tables the stack holds (default: the project's)."""

    def __init__(
        self,
        *,
        cfg: PipelineConfig | None = None,
        backend: str = "server",
        host: str = "127.0.0.1",
        port: int = 0,
        log_dir: Path | None = None,
        progress: Progress | None = None,
        in_process_tasks: bool = False,
        wrap_runner: Callable[[Runner], Runner] | None = None,
        pump_wait_seconds: int = 1,
    ) -> None:
        if backend not in ("server", "mock"):
            raise ValueError(f"backend {backend!r}; allowed: server, mock")
        self.backend = backend
        self.cfg = cfg
        self.server = MotoServer(host, port)
        self.log_dir = log_dir
        self.say = progress or (lambda _msg: None)
        self.in_process_tasks = in_process_tasks or backend == "mock"
        self.wrap_runner = wrap_runner
        self.pump_wait_seconds = pump_wait_seconds
        self._stack = contextlib.ExitStack()
        self._session: Any = None
        self._endpoint: str | None = None
        self.trigger_counts: dict[str, int] = {}
        self.resources: Resources
        self.pump: S3EventPump
        self.agent: EcsAgent

    # lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> Emulator:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *_: Any) -> None:
        self._stack.close()

    def _start(self) -> None:
        started = time.perf_counter()
        if self.backend == "server":
            self._stack.enter_context(self.server)
            self._endpoint = self.server.endpoint
            self._stack.enter_context(pointed_at(self._endpoint))
        else:
            from moto import mock_aws

            shims.install()
            self._stack.enter_context(pointed_at(None))  # credentials and region before moto starts
            self._stack.enter_context(mock_aws(config={"stepfunctions": {"execute_state_machine": True}}))
        self._session = boto3.session.Session(region_name=REGION)
        self.resources = create_resources(self.client, cfg=self.cfg)
        task_env = self.resources.task_environment()
        self._stack.enter_context(environ(task_env))  # the in-process Lambda handler reads these per call
        base = {**emulator_environment(self._endpoint), **task_env}
        runner: Runner = InProcessRunner(base) if self.in_process_tasks else SubprocessRunner(base, self.log_dir)
        if self.wrap_runner is not None:
            runner = self.wrap_runner(runner)
        self.agent = EcsAgent(self.client("ecs"), self.client("stepfunctions"), self.resources.cluster_arn, runner,
                              on_event=self._agent_event)
        self._stack.callback(self.agent.stop)
        self.agent.start()
        self.base_runner = runner
        self._stack.callback(lambda: self.pump.stop())
        self._new_pump()
        self.say(f"emulator up at {self._endpoint or 'moto (in-process)'} in {time.perf_counter() - started:.1f} s")

    def _new_pump(self) -> None:
        self.pump = S3EventPump(self.client("sqs"), self.resources.queue_url, chalice_handler(),
                                wait_seconds=self.pump_wait_seconds, on_event=self._pump_event)
        self.pump.start()

    def reset(self, wrap_runner: Callable[[Runner], Runner] | None = None, timeout: float = 60) -> None:
        """Back to an empty pipeline on the same emulator (a test suite's next test; `kpipe serve` users):
        no objects but the config, empty tables, an empty queue and a fresh pump, the agent's record
        cleared and its runner re-wrapped. Earlier executions stay listed (Step Functions keeps them)."""
        self.wait_idle(set(), timeout)
        self.pump.stop()
        s3, bucket = self.client("s3"), self.resources.bucket
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
                      if not v["Key"].startswith("config/")]
            if doomed:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed, "Quiet": True})
        dynamodb = self.resource("dynamodb")
        for name in [*self.resources.kpi_tables.values(), self.resources.outputs["ControlTableName"]]:
            table = dynamodb.Table(name)
            names = [k["AttributeName"] for k in table.key_schema]
            scan: dict[str, Any] = {
                "ProjectionExpression": ", ".join(f"#k{i}" for i in range(len(names))),
                "ExpressionAttributeNames": {f"#k{i}": n for i, n in enumerate(names)},
            }
            with table.batch_writer() as writer:
                while True:
                    page = table.scan(**scan)
                    for item in page.get("Items", []):
                        writer.delete_item(Key=item)
                    if "LastEvaluatedKey" not in page:
                        break
                    scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        sqs = self.client("sqs")  # drain (PurgeQueue is allowed once a minute)
        while messages := sqs.receive_message(QueueUrl=self.resources.queue_url, MaxNumberOfMessages=10).get("Messages"):
            for message in messages:
                sqs.delete_message(QueueUrl=self.resources.queue_url, ReceiptHandle=message["ReceiptHandle"])
        self.agent.completed.clear()
        self.agent.runner = wrap_runner(self.base_runner) if wrap_runner is not None else self.base_runner
        self._new_pump()

    def client(self, service: str) -> Any:
        return self._session.client(service, endpoint_url=self._endpoint)

    def resource(self, service: str) -> Any:
        return self._session.resource(service, endpoint_url=self._endpoint)

    @property
    def endpoint(self) -> str:
        if self._endpoint is None:
            raise RuntimeError("the in-process emulator has no endpoint")
        return self._endpoint

    # progress -----------------------------------------------------------------------------------
    def _pump_event(self, key: str, outcome: Mapping[str, Any]) -> None:
        for o in outcome.get("outcomes", []):
            self.trigger_counts[o.get("status", "?")] = self.trigger_counts.get(o.get("status", "?"), 0) + 1
            if o.get("status") == "started":
                self.say(f"  {key}: batch complete -> execution {o['batch_id']}")

    def _agent_event(self, what: str, run: TaskRun, result: RunResult | None) -> None:
        bid = run.environment.get("KPIPE_BATCH_ID", "?")
        if what == "started":
            self.say(f"  {bid}: {run.family} task started")
        elif result is not None and result.exit_code not in (0, 3):
            self.say(f"  {bid}: {run.family} task crashed (exit {result.exit_code})")

    # pipeline state -----------------------------------------------------------------------------
    def executions(self) -> dict[str, dict[str, Any]]:
        sfn = self.client("stepfunctions")
        found: dict[str, dict[str, Any]] = {}
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=self.resources.state_machine_arn):
            for e in page.get("executions", []):
                found[e["executionArn"]] = e
        return found

    def running(self) -> list[str]:
        return [arn for arn, e in self.executions().items() if e["status"] == "RUNNING"]

    def wait_idle(self, expect_keys: set[str], timeout: float, poll: float = 0.2) -> None:
        """Until every expected key's event is handled, the queue is empty and no execution runs."""
        deadline = time.monotonic() + timeout
        while True:
            pump_done = self.pump.stopped or (self.pump.has_handled(expect_keys) and self.pump.idle)
            if pump_done and not self.running() and not self.agent.busy:
                return
            if time.monotonic() > deadline:
                raise RunError(
                    f"the pipeline did not settle within {timeout:.0f} s "
                    f"(running executions: {self.running()}, pump errors: {self.pump.errors[-3:]})"
                )
            time.sleep(poll)

    def upload_config(self, cfg_text: str, layout: Layout) -> None:
        self.client("s3").put_object(Bucket=self.resources.bucket, Key=layout.config_key, Body=cfg_text.encode("utf-8"))

    # OUT <-> emulator -------------------------------------------------------------------------
    def restore_state(self, out: Path, cfg: PipelineConfig, layout: Layout) -> int:
        """Load OUT's processed store and KPI tables into the emulator; returns how many files were loaded."""
        s3, bucket = self.client("s3"), self.resources.bucket
        local = out / "processed"
        count = 0
        if local.is_dir():
            for path in sorted(p for p in local.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
                s3.upload_file(str(path), bucket, layout.processed_prefix + path.relative_to(local).as_posix())
                count += 1
        store = self.kpi_store(cfg)
        for table_name in cfg.kpis:
            items = load_table(out / f"{table_name}.json")
            if items:
                store.table(table_name).put_items(items)
        return count

    def save_state(self, out: Path, cfg: PipelineConfig, layout: Layout, since: float) -> None:
        """Write OUT's KPI tables (as `kpipe process` writes them) and the processed files changed since `since`."""
        store = self.kpi_store(cfg)
        for table_name, spec in cfg.kpis.items():
            save_table(out / f"{table_name}.json", store.table(table_name).dump(), list(spec.key))
        s3, bucket = self.client("s3"), self.resources.bucket
        local = out / "processed"
        store = S3Store(s3, bucket, layout.processed_prefix)
        changed: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=layout.processed_prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(layout.processed_prefix) :]
                if not ((local / name).exists() and obj["LastModified"].timestamp() < since - 1):
                    changed.append(name)
        # a batch spanning years changes thousands of date files: several GETs in flight
        with ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="save-state") as pool:
            for name, found in zip(changed, pool.map(lambda name: store.fetch(name, local / name), changed), strict=True):
                if not found:
                    raise FileNotFoundError(f"s3://{bucket}/{layout.processed_prefix}{name} vanished while OUT was saved")

    def kpi_store(self, cfg: PipelineConfig | None = None) -> KpiStore:
        """The stack's KPI tables (of `cfg`, default: the config the stack was deployed for)."""
        return KpiStore(self.resource("dynamodb"), cfg or self.cfg or load_config(default_config_path()), self.resources.kpi_tables)

    # one batch --------------------------------------------------------------------------------
    def run_batch(self, batch_dir: Path, cfg: PipelineConfig, layout: Layout, timeout: float) -> list[dict[str, Any]]:
        """Upload one batch directory file by file, wait for the pipeline, return its report entries."""
        started = time.perf_counter()
        before = set(self.executions())
        s3, bucket = self.client("s3"), self.resources.bucket
        keys: set[str] = set()
        self.trigger_counts.clear()
        for rel in upload_order(dataset_files(cfg, batch_dir)):
            key = layout.raw_prefix + rel
            s3.upload_file(str(batch_dir / rel), bucket, key)
            keys.add(key)
        self.say(f"{batch_dir}: uploaded {len(keys)} files to s3://{bucket}/{layout.raw_prefix}")
        self.wait_idle(keys, timeout)
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.trigger_counts.items()))
        self.say(f"{batch_dir}: S3 events handled by the Lambda handler: {counts or 'none'}")

        entries = []
        sfn = self.client("stepfunctions")
        for arn in sorted(set(self.executions()) - before):
            execution = sfn.describe_execution(executionArn=arn)
            bid = json.loads(execution.get("input") or "{}").get("batch_id", execution["name"])
            report = _get_json(s3, bucket, layout.report_key(bid)) or {}
            status = report.get("status")
            if status == "SKIPPED" or (status is None and execution["status"] == "SUCCEEDED"):
                continue
            entries.append(_entry(bid, batch_dir, execution, report, time.perf_counter() - started))
        left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=layout.raw_prefix).get("Contents", []) if o["Key"] in keys]
        if left and not any(e["status"] == "FAILED" for e in entries):
            self.say(f"{batch_dir}: {len(left)} files stay in {layout.raw_prefix} for a later run: {left[:5]}")
        for e in entries:
            self.say(f"{batch_dir}: {e['batch_id']} {e['status'].lower()}" + (f" ({e['failure']})" if e.get("failure") else ""))
        return entries

    def fetch_rejected(self, out: Path, cfg: PipelineConfig, layout: Layout, batch_id: str) -> None:
        s3, bucket = self.client("s3"), self.resources.bucket
        dest = out / "rejected" / batch_id
        dest.mkdir(parents=True, exist_ok=True)
        for name in cfg.datasets:
            with contextlib.suppress(Exception):
                s3.download_file(bucket, layout.rejected_key(batch_id, name), str(dest / f"{name}.csv"))


def upload_order(files: Mapping[str, list[str]]) -> list[str]:
    """Every file, the dataset with the fewest files last: the batch is complete only when the last file
    lands, so one execution sees it all (a user's other orders are fine too: the settle wait and the
    snapshot take care of them)."""
    datasets = sorted(files, key=lambda name: (-len(files[name]), name))
    return [rel for name in datasets for rel in files[name]]


def _get_json(s3: Any, bucket: str, key: str) -> Any:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def _entry(bid: str, batch_dir: Path, execution: Mapping[str, Any], report: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """One batch of OUT/report.json, in `kpipe process`'s shape."""
    status = report.get("status") or ("FAILED" if execution["status"] != "SUCCEEDED" else "SUCCEEDED")
    if status == "FAILED" and report.get("stage") == "rejected":
        status = "REJECTED"
    entry: dict[str, Any] = {
        "batch_id": bid,
        "source": str(batch_dir),
        "status": status,
        "datasets": report.get("datasets", {}),
        "threshold_exceeded": bool(report.get("threshold_exceeded", False)),
        "threshold_problems": report.get("threshold_problems", []),
        "execution": execution["name"],
        "seconds": round(seconds, 3),
    }
    for field in ("executor", "seq", "dates", "rows_carried"):
        if field in report:
            entry[field] = report[field]
    if status != "SUCCEEDED":
        failure = report.get("failure") or {"Error": execution.get("error"), "Cause": execution.get("cause")}
        entry["failure"] = f"{failure.get('Error')}: {str(failure.get('Cause') or '')[:300]}"
    return entry


def _config_text(config_path: Path, settle_seconds: int | None, executor: str | None = None) -> tuple[str, PipelineConfig]:
    """pipeline.yaml as uploaded: the user's file, with the settle wait shortened for the emulator and
    the executor `--engine` chose (the tasks read the config in the bucket, so that is where it goes)."""
    text = config_path.read_text(encoding="utf-8")
    load_config(config_path)  # refuse a bad file with its own path in the messages
    if settle_seconds is not None or executor is not None:
        data = yaml.safe_load(text)
        if settle_seconds is not None:
            data.setdefault("trigger", {})["settle_seconds"] = int(settle_seconds)
        if executor is not None:
            data.setdefault("engine", {})["executor"] = executor
        text = yaml.safe_dump(data, sort_keys=False)
    return text, parse_config(text, str(config_path))


def run_batches(
    batch_dirs: list[Path],
    out: Path,
    config_path: Path | None = None,
    *,
    settle_seconds: int | None = DEFAULT_SETTLE_SECONDS,
    progress: Progress | None = None,
    timeout_seconds: float = 1800,
    in_process_tasks: bool = False,
    backend: str = "server",
    executor: str | None = None,
) -> dict[str, Any]:
    """The full event-driven path on the embedded emulator; writes OUT and returns the report.
    (`backend="mock"`: moto in-process and tasks in threads, for tests; see `Emulator`.)"""
    from kpipe.process import BatchIncomplete, missing_parts

    say = progress or (lambda _msg: None)
    config_path = Path(config_path) if config_path else default_config_path()
    text, cfg = _config_text(config_path, settle_seconds, executor)
    layout = Layout.from_config(cfg)
    batch_dirs = [Path(d) for d in batch_dirs]
    for batch_dir in batch_dirs:
        missing = missing_parts(cfg, batch_dir)
        if missing:
            raise BatchIncomplete(f"{batch_dir} is not a complete batch: missing {', '.join(missing)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    started = time.time()
    log_dir.mkdir(parents=True, exist_ok=True)
    # The in-process Lambda handler logs JSON lines to stdout, as on Lambda; here they go to a file so
    # stdout stays the command's own (tables, or --json).
    with (
        open(log_dir / "lambda.log", "w", encoding="utf-8") as lambda_log,
        contextlib.redirect_stdout(lambda_log),
        Emulator(cfg=cfg, backend=backend, log_dir=log_dir, progress=say, in_process_tasks=in_process_tasks) as emu,
    ):
        emu.upload_config(text, layout)
        restored = emu.restore_state(out, cfg, layout)
        if restored:
            say(f"loaded OUT's state: {restored} processed files")
        entries: list[dict[str, Any]] = []
        for i, batch_dir in enumerate(batch_dirs):
            batch_entries = emu.run_batch(batch_dir, cfg, layout, timeout_seconds)
            for entry in batch_entries:
                emu.fetch_rejected(out, cfg, layout, entry["batch_id"])
                entries.append(entry)
            if any(e["status"] == "FAILED" for e in batch_entries) and i + 1 < len(batch_dirs):
                # Its raw files are still in raw-data/ (for a rerun): uploading the next batch on top of
                # them would mix the two, so stop here.
                say(f"stopping after the failed batch; not uploaded: {', '.join(map(str, batch_dirs[i + 1:]))}")
                break
        emu.save_state(out, cfg, layout, since=started)
    report = {"batches": entries}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_port: int = 8000,
    config_path: Path | None = None,
    settle_seconds: int | None = DEFAULT_SETTLE_SECONDS,
    progress: Progress | None = None,
    ready: Callable[[dict[str, str]], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> None:
    """The emulator plus `chalice local` until Ctrl-C (or until `stop()` says so)."""
    say = progress or (lambda _msg: None)
    config_path = Path(config_path) if config_path else default_config_path()
    text, cfg = _config_text(config_path, settle_seconds)
    layout = Layout.from_config(cfg)
    with Emulator(cfg=cfg, host=host, port=port, progress=say) as emu:
        emu.upload_config(text, layout)
        env = {**os.environ, **emulator_environment(emu.endpoint), **emu.resources.task_environment()}
        chalice = subprocess.Popen(
            [sys.executable, "-c", _CHALICE_MAIN, "local", "--no-autoreload", "--host", host, "--port", str(api_port)],
            cwd=ROOT,
            env=env,
        )
        try:
            endpoints = {
                "aws_endpoint": emu.endpoint,
                "api": f"http://{host}:{api_port}",
                "bucket": emu.resources.bucket,
                "upload_to": f"s3://{emu.resources.bucket}/{layout.raw_prefix}",
                "state_machine": emu.resources.state_machine_arn,
            }
            if ready is not None:
                ready(endpoints)
            while chalice.poll() is None and not (stop is not None and stop()):
                time.sleep(0.2)
            if chalice.poll() is not None:
                raise RunError(f"chalice local exited with code {chalice.returncode}")
        except KeyboardInterrupt:
            say("stopping")
        finally:
            if chalice.poll() is None:
                chalice.terminate()
                try:
                    chalice.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    chalice.kill()
