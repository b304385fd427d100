"""`kpipe process`: the engine alone on local batch directories, no emulator.

OUT keeps state between calls (the processed store, the KPI tables), so a later call with the same
OUT adds its batches to what is there, exactly as later uploads do on AWS.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chalicelib.config import PipelineConfig
from kpipe import history
from kpipe.engine.store import LocalStore
from kpipe.engine.transform import transform_batch
from kpipe.engine.validate import content_digest, dataset_files, validate_batch
from kpipe.tables import load_table, replace_periods, save_table

Progress = Callable[[str], None]


def local_batch_id(cfg: PipelineConfig, batch_dir: Path, digest: str | None = None) -> str:
    """Content-addressed: the same files give the same id, so re-processing is recognised
    (`digest`: the batch's `content_digest`, when the caller has it already)."""
    return "b-" + (digest or content_digest(batch_dir, dataset_files(cfg, batch_dir)))[:20]


def missing_parts(cfg: PipelineConfig, batch_dir: Path) -> list[str]:
    files = dataset_files(cfg, batch_dir)
    return [f"{name} ({cfg.datasets[name].files})" for name, rels in files.items() if not rels]


def process_batches(
    cfg: PipelineConfig,
    batch_dirs: list[Path],
    out: Path,
    progress: Progress | None = None,
    executor: str | None = None,
) -> dict[str, Any]:
    say = progress or (lambda _msg: None)
    out.mkdir(parents=True, exist_ok=True)
    store = LocalStore(out / "processed")
    reports = []
    for batch_dir in batch_dirs:
        batch_dir = Path(batch_dir)
        missing = missing_parts(cfg, batch_dir)
        if missing:
            raise BatchIncomplete(f"{batch_dir} is not a complete batch: missing {', '.join(missing)}")
        digest = content_digest(batch_dir, dataset_files(cfg, batch_dir))
        batch_id = local_batch_id(cfg, batch_dir, digest)
        work = out / "work" / batch_id
        shutil.rmtree(work, ignore_errors=True)
        started = time.perf_counter()
        say(f"{batch_id}: validating {batch_dir} ({executor or cfg.engine.executor})")
        report = validate_batch(cfg, batch_dir, work, batch_id, executor, digest)
        report["source"] = str(batch_dir)
        report["validate_seconds"] = round(time.perf_counter() - started, 3)
        _keep_rejected(out / "rejected" / batch_id, work / "rejected")
        if report["threshold_exceeded"]:
            report["status"] = "REJECTED"
            say(f"{batch_id}: rejected - {'; '.join(report['threshold_problems'])}")
        else:
            say(f"{batch_id}: transforming")
            result = transform_batch(cfg, batch_id, work / "validated", store, work / "transform", executor)
            for table_name, by_period in result.tables.items():
                path = out / f"{table_name}.json"
                period = cfg.period_of(table_name)
                items = replace_periods(load_table(path), by_period, period[0] if period else None)
                save_table(path, items, cfg.kpis[table_name].key)
            report.update(
                status="SUCCEEDED",
                seq=result.seq,
                dates=result.dates,
                rows_carried=result.rows_carried,
                null_key_rows=result.null_keys,
                transform_seconds=round(time.perf_counter() - started - report["validate_seconds"], 3),
            )
            if result.replay_of is not None:
                report.update(status="SKIPPED", reason=f"already processed as seq {result.replay_of}: nothing changed")
        for table_name, table in cfg.kpis.items():
            path = out / f"{table_name}.json"
            if not path.exists():
                save_table(path, [], table.key)
        report["seconds"] = round(time.perf_counter() - started, 3)
        shutil.rmtree(work, ignore_errors=True)
        history.append(out, report)
        reports.append(report)
        say(f"{batch_id}: {report['status'].lower()} in {report['seconds']} s")
    result_report = {"batches": reports}
    (out / "report.json").write_text(json.dumps(result_report, indent=1) + "\n", encoding="utf-8")
    return result_report


class BatchIncomplete(Exception):
    """A batch directory lacks a dataset: nothing of it is processed."""


def _keep_rejected(dest: Path, rejected_dir: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in rejected_dir.glob("*.csv"):
        shutil.copyfile(path, dest / path.name)
