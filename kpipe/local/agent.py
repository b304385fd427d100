"""The local ECS agent: runs the tasks the state machine starts, as Fargate would run their containers.

It polls the emulator's ECS for new tasks of the cluster, and for each one takes the container's command
and environment from the task definition with the run's overrides applied (KPIPE_BATCH_ID,
KPIPE_MANIFEST_KEY, KPIPE_TASK_TOKEN, ...), runs it, then stops the task. Tasks run concurrently (a
thread pool), as Fargate would run them.

Runners:
- `SubprocessRunner` (the real thing): `python -m ecs_tasks.<name>` as a child process with exactly that
  environment plus the emulator's endpoint, region and dummy credentials.
- `InProcessRunner` (tests): the same entrypoint called in a thread with that environment as a mapping,
  for suites that run moto in-process and want to skip interpreter start-up.

The task reports its own outcome to Step Functions with its token (ecs_tasks.common). When it exits
without having reported (exit code other than 0 or 3: a crash, a kill), the agent reports
`Kpipe.TaskCrashed` on its behalf, which on AWS the state's HeartbeatSeconds would catch later.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalicelib.obs import get_logger

ROOT = Path(__file__).resolve().parents[2]
REPORTED_EXIT_CODES = (0, 3)  # ecs_tasks.common: EXIT_SUCCEEDED, EXIT_REPORTED_FAILURE
CONTAINER_NAME = "kpipe"
# What a child process keeps from ours (the rest of the environment is the task's, as in a container).
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT", "VIRTUAL_ENV", "PYTHONHASHSEED")


@dataclass(frozen=True)
class TaskRun:
    """One ECS task as the agent sees it."""

    task_arn: str
    family: str
    command: list[str]
    environment: dict[str, str]

    @property
    def short_id(self) -> str:
        return self.task_arn.rsplit("/", 1)[-1][:12]

    @property
    def task_token(self) -> str | None:
        return self.environment.get("KPIPE_TASK_TOKEN")


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    output_tail: str = ""


Runner = Callable[[TaskRun], RunResult]


class SubprocessRunner:
    """Run the container command as a child process (`python` is this interpreter)."""

    def __init__(self, base_env: Mapping[str, str], log_dir: Path | None = None, timeout: float = 3600) -> None:
        self.base_env = dict(base_env)
        self.log_dir = log_dir
        self.timeout = timeout

    def __call__(self, run: TaskRun) -> RunResult:
        command = list(run.command)
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable
        env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.base_env)
        env.update(run.environment)
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{run.family}-{run.short_id}.log"
            with open(log_path, "wb") as log_file:
                proc = subprocess.run(command, env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, timeout=self.timeout)
            tail = log_path.read_bytes()[-3000:].decode("utf-8", "replace")
        else:
            proc = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=self.timeout)
            out = proc.stdout or b""
            sys.stderr.write(out.decode("utf-8", "replace"))
            tail = out[-3000:].decode("utf-8", "replace")
        return RunResult(proc.returncode, tail)


class InProcessRunner:
    """Call the entrypoint's `main(env)` in this process (the module named by `-m` in the command)."""

    def __init__(self, base_env: Mapping[str, str] | None = None) -> None:
        self.base_env = dict(base_env or {})

    def __call__(self, run: TaskRun) -> RunResult:
        module = run.command[run.command.index("-m") + 1]
        entry = importlib.import_module(module)
        try:
            code = entry.main({**self.base_env, **run.environment})
        except BaseException as exc:  # a crash, as a process would have died of it
            return RunResult(1, f"{type(exc).__name__}: {exc}")
        return RunResult(int(code or 0))


class EcsAgent:
    """Poll the cluster for tasks, run each once, stop it, report crashes. `start()`/`stop()` or a `with`."""

    def __init__(
        self,
        ecs: Any,
        sfn: Any,
        cluster: str,
        runner: Runner,
        *,
        poll_seconds: float = 0.1,
        max_workers: int = 4,
        on_event: Callable[[str, TaskRun, RunResult | None], None] | None = None,
    ) -> None:
        self.ecs, self.sfn, self.cluster, self.runner = ecs, sfn, cluster, runner
        self.poll_seconds = poll_seconds
        self.on_event = on_event
        self.log = get_logger(component="local.agent")
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ecs-task")
        self._seen: set[str] = set()
        self._running: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ecs-agent", daemon=True)
        self._taskdefs: dict[str, dict[str, Any]] = {}
        self.completed: list[tuple[TaskRun, RunResult]] = []
        self.errors: list[str] = []

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> EcsAgent:
        self._thread.start()
        return self

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> EcsAgent:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    @property
    def busy(self) -> int:
        """Tasks being run right now."""
        with self._lock:
            return sum(1 for f in self._running.values() if not f.done())

    # polling ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # the emulator shutting down, or a transient error: keep polling
                if not self._stop.is_set():
                    self.errors.append(str(exc))
                    self.log.warning("agent_poll_failed", error=str(exc)[:300])
            self._stop.wait(self.poll_seconds)

    def poll_once(self) -> list[TaskRun]:
        """Start every task not seen before; return them."""
        arns = []
        for page in self.ecs.get_paginator("list_tasks").paginate(cluster=self.cluster, desiredStatus="RUNNING"):
            arns.extend(a for a in page.get("taskArns", []) if a not in self._seen)
        if not arns:
            return []
        started = []
        for i in range(0, len(arns), 100):
            for task in self.ecs.describe_tasks(cluster=self.cluster, tasks=arns[i : i + 100])["tasks"]:
                self._seen.add(task["taskArn"])
                run = self._task_run(task)
                with self._lock:
                    self._running[run.task_arn] = self._pool.submit(self._execute, run)
                started.append(run)
        return started

    def _task_run(self, task: Mapping[str, Any]) -> TaskRun:
        taskdef_arn = task["taskDefinitionArn"]
        taskdef = self._taskdefs.get(taskdef_arn)
        if taskdef is None:
            taskdef = self.ecs.describe_task_definition(taskDefinition=taskdef_arn)["taskDefinition"]
            self._taskdefs[taskdef_arn] = taskdef
        containers = taskdef["containerDefinitions"]
        container = next((c for c in containers if c["name"] == CONTAINER_NAME), containers[0])
        command = list(container.get("command") or [])
        env = {e["name"]: e["value"] for e in container.get("environment", [])}
        for override in task.get("overrides", {}).get("containerOverrides", []):
            if override.get("name") != container["name"]:
                continue
            command = list(override.get("command") or command)
            env.update({e["name"]: e["value"] for e in override.get("environment", [])})
        return TaskRun(task["taskArn"], taskdef.get("family", "task"), command, env)

    # running ------------------------------------------------------------------------------------
    def _execute(self, run: TaskRun) -> None:
        log = self.log.bind(task=run.family, task_id=run.short_id, batch_id=run.environment.get("KPIPE_BATCH_ID"))
        log.info("task_run", command=run.command)
        self._notify("started", run, None)
        started = time.perf_counter()
        try:
            result = self.runner(run)
        except Exception as exc:
            result = RunResult(-1, f"agent could not run the task: {type(exc).__name__}: {exc}")
        if result.exit_code not in REPORTED_EXIT_CODES and run.task_token:
            self._report_crash(run, result, log)
        try:
            self.ecs.stop_task(cluster=self.cluster, task=run.task_arn, reason=f"Essential container exited with code {result.exit_code}")
        except Exception as exc:
            log.warning("stop_task_failed", error=str(exc)[:300])
        log.info("task_exited", exit_code=result.exit_code, seconds=round(time.perf_counter() - started, 3))
        self.completed.append((run, result))
        self._notify("exited", run, result)

    def _report_crash(self, run: TaskRun, result: RunResult, log: Any) -> None:
        cause = f"{run.family} exited with code {result.exit_code} without reporting.\n{result.output_tail[-2000:]}"
        try:
            self.sfn.send_task_failure(taskToken=run.task_token, error="Kpipe.TaskCrashed", cause=cause)
            log.warning("task_crashed", exit_code=result.exit_code)
        except Exception as exc:  # the state already timed out or moved on
            log.warning("crash_report_failed", error=str(exc)[:300])

    def _notify(self, what: str, run: TaskRun, result: RunResult | None) -> None:
        if self.on_event is not None:
            with contextlib.suppress(Exception):  # progress display must never break the agent
                self.on_event(what, run, result)
