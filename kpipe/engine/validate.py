"""Validate one batch (ECS task 1's logic): raw CSV files in, valid and rejected rows plus a report out.

Writes `out_dir/validated/<dataset>.parquet` (the valid rows, typed, derived fields included, in file
and line order), `out_dir/validated/batch.json` (the batch's content digest: the same files again are
recognised as the same rows) and `out_dir/rejected/<dataset>.csv` (each rejected row's file, line,
reasons and original values), with the executor the config names (or `executor`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from chalicelib.config import PipelineConfig
from chalicelib.layout import Layout
from kpipe.engine.executors import open_executor
from kpipe.engine.plan import compile_plan


def dataset_files(cfg: PipelineConfig, raw_dir: Path) -> dict[str, list[str]]:
    """Relative paths below raw_dir for each dataset, in key (lexicographic) order."""
    layout = Layout.from_config(cfg)
    found: dict[str, list[str]] = {name: [] for name in cfg.datasets}
    if raw_dir.exists():
        for path in raw_dir.rglob("*"):
            if path.is_file():
                rel = path.relative_to(raw_dir).as_posix()
                name = layout.dataset_of(layout.raw_prefix + rel)
                if name is not None:
                    found[name].append(rel)
    return {name: sorted(files) for name, files in found.items()}


def content_digest(raw_dir: Path, files: dict[str, list[str]]) -> str:
    """What the batch holds, whatever it is called: dataset, name and bytes of every file."""
    digest = hashlib.sha256()
    for name in sorted(files):
        for rel in files[name]:
            digest.update(f"{name}\0{rel}\0".encode())
            with open(Path(raw_dir) / rel, "rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def validate_batch(
    cfg: PipelineConfig, raw_dir: Path, out_dir: Path, batch_id: str, executor: str | None = None, digest: str | None = None
) -> dict[str, Any]:
    """`digest`: the batch's content digest when the caller has it already (`kpipe process` names the batch by it)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    validated = out_dir / "validated"
    validated.mkdir(parents=True, exist_ok=True)
    files = dataset_files(cfg, raw_dir)
    plan = compile_plan(cfg)
    with open_executor(cfg, out_dir / "work", executor) as ex:
        results = ex.validate(plan, raw_dir, files, validated)
    # the executors write rejected rows beside the valid ones; the report's place is out_dir/rejected
    (out_dir / "rejected").mkdir(parents=True, exist_ok=True)
    for path in (validated / "rejected").glob("*.csv"):
        path.replace(out_dir / "rejected" / path.name)
    (validated / "rejected").rmdir()
    (validated / "batch.json").write_text(json.dumps({"batch_id": batch_id, "digest": digest or content_digest(raw_dir, files)}) + "\n")
    datasets = {name: results[name].report() for name in cfg.datasets}
    problems = threshold_problems(cfg, datasets)
    return {
        "batch_id": batch_id,
        "executor": executor or cfg.engine.executor,
        "datasets": datasets,
        "files": {rel: stats for name in cfg.datasets for rel, stats in results[name].files.items()},
        "threshold_exceeded": bool(problems),
        "threshold_problems": problems,
    }


def threshold_problems(cfg: PipelineConfig, datasets: dict[str, dict[str, Any]]) -> list[str]:
    """One line per dataset whose rejected fraction is above its `reject_threshold`."""
    problems = []
    for name, stats in datasets.items():
        threshold = cfg.datasets[name].reject_threshold
        if threshold is not None and stats["rows_in"]:
            fraction = stats["rows_rejected"] / stats["rows_in"]
            if fraction > threshold:
                problems.append(
                    f"{name}: {stats['rows_rejected']} of {stats['rows_in']} rows rejected "
                    f"({fraction:.2%}) > reject_threshold {threshold}"
                )
    return problems
