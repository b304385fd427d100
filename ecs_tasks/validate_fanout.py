"""Validation fanned out over groups of raw files (`KPIPE_VALIDATE_STEP` = files | merge).

A big batch (at least `KPIPE_VALIDATE_FANOUT_MIN_BYTES` of raw files, default 256 MiB, and
`scale.validate_concurrency` > 1 in pipeline.yaml) is validated one dataset at a time, in dependency
order (a referenced dataset first), each dataset as:

1. a Map state of `files` tasks, one per group of its files (`KPIPE_FILE_GROUP` of `KPIPE_FILE_GROUPS`):
   each validates its files alone against the referenced datasets' valid keys and leaves, per file,
   the valid and rejected part files and its outcome (counts, reasons, the keys it claimed) under
   `validated/<batch_id>/_fanout/<dataset>/`;
2. one `merge` task: the outcomes in file order, exactly as the single task would have decided them
   (`kpipe.engine.validate.merge_outcomes`: a file that claimed a key an earlier file claimed is
   validated again, in order), joined into `validated/<batch_id>/<dataset>.csv` and
   `rejected/<batch_id>/<dataset>.csv`; the dataset's valid keys, when referenced, are left for the
   next datasets' tasks. It answers with the next dataset's groups, or, after the last, with the
   same output as the single validate task.

Every step only writes keys derived from the batch id, so a retried task converges. The plan (dataset
order, files, group count, stats so far) is `reports/<batch_id>/validate-plan.json`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from chalicelib.config import PipelineConfig
from chalicelib.layout import Layout
from ecs_tasks import common
from kpipe.engine.keys import KeyTable
from kpipe.engine.outcomes import load_keys, load_outcome, save_keys, save_outcome
from kpipe.engine.rules import BatchRefs
from kpipe.engine.validate import (
    finish_dataset,
    is_referenced,
    merge_outcomes,
    threshold_problems,
    validate_files_alone,
)

DEFAULT_FANOUT_MIN_BYTES = 256 << 20


def file_groups(rels: list[str], groups: int) -> list[list[tuple[int, str]]]:
    """Files numbered in key order, dealt into at most `groups` groups (neighbours spread the load).

    >>> file_groups(["a", "b", "c"], 2)
    [[(0, 'a'), (2, 'c')], [(1, 'b')]]
    """
    jobs = list(enumerate(rels))
    groups = max(1, min(groups, len(jobs)))
    return [jobs[i::groups] for i in range(groups)]


def plan(ctx: common.TaskContext, cfg: PipelineConfig, layout: Layout, snapshot: list[Any]) -> dict[str, Any] | None:
    """The first stage's Map input when the batch is big enough to fan out, else None (one task)."""
    min_bytes = int(ctx.env.get("KPIPE_VALIDATE_FANOUT_MIN_BYTES") or DEFAULT_FANOUT_MIN_BYTES)
    order = cfg.dataset_order()
    files = {name: sorted(layout.relative(e.key) for e in snapshot if e.dataset == name) for name in order}
    if cfg.scale.validate_concurrency < 2 or sum(e.size for e in snapshot) < min_bytes or max(map(len, files.values())) < 2:
        return None
    document = {
        "order": order,
        "files": files,
        "group_count": cfg.scale.validate_concurrency,
        "datasets": {},
        "started_at": time.time(),
    }
    common.put_json(ctx.s3, ctx.bucket, layout.validate_plan_key(ctx.batch_id), document)
    return _stage(ctx.batch_id, document, 0)


def _stage(batch_id: str, document: dict[str, Any], stage: int) -> dict[str, Any]:
    name = document["order"][stage]
    groups = len(file_groups(document["files"][name], document["group_count"]))
    return {
        "status": "fanout",
        "batch_id": batch_id,
        "stage": stage,
        "dataset": name,
        "groups": list(range(groups)),
        "group_count": groups,
    }


def _load_plan(ctx: common.TaskContext, layout: Layout) -> tuple[dict[str, Any], int, str]:
    document = common.get_json(ctx.s3, ctx.bucket, layout.validate_plan_key(ctx.batch_id))
    if not document:
        raise RuntimeError(f"no validation plan at {layout.validate_plan_key(ctx.batch_id)}: the validate step has not run")
    stage = int(ctx.env["KPIPE_VALIDATE_STAGE"])
    return document, stage, document["order"][stage]


def _versions(ctx: common.TaskContext, layout: Layout) -> dict[str, str | None]:
    snapshot = common.get_json(ctx.s3, ctx.bucket, layout.snapshot_key(ctx.batch_id)) or {}
    return {layout.relative(o["key"]): o.get("version_id") for o in snapshot.get("objects", [])}


def _refs(ctx: common.TaskContext, cfg: PipelineConfig, layout: Layout, document: dict[str, Any], stage: int, tmp: Path) -> BatchRefs:
    """The valid keys of every earlier dataset that something references, as their merges left them."""
    refs = BatchRefs(cfg)
    for name in document["order"][:stage]:
        if is_referenced(cfg, name):
            path = tmp / f"{name}.keys.json"
            common.download(ctx.s3, ctx.bucket, layout.fanout_key(ctx.batch_id, f"refs/{name}.json"), None, path)
            refs.tables[name] = load_keys(path)
    return refs


def files(ctx: common.TaskContext, cfg: PipelineConfig, layout: Layout, log: Any) -> dict[str, Any]:
    """One group of one dataset's files, each validated alone; parts and outcomes to S3."""
    started = time.perf_counter()
    document, stage, name = _load_plan(ctx, layout)
    group = int(ctx.env["KPIPE_FILE_GROUP"])
    jobs = file_groups(document["files"][name], int(ctx.env.get("KPIPE_FILE_GROUPS") or document["group_count"]))[group]
    versions = _versions(ctx, layout)
    prefix = layout.fanout_key(ctx.batch_id, f"{name}/")
    with common.work_dir("validate-files") as tmp:
        raw_dir, part_dir = Path(tmp) / "raw", Path(tmp) / "parts"
        part_dir.mkdir()
        refs = _refs(ctx, cfg, layout, document, stage, Path(tmp))
        for _, rel in jobs:
            common.download(ctx.s3, ctx.bucket, layout.raw_prefix + rel, versions.get(rel), raw_dir / rel)
        outcomes = validate_files_alone(cfg, name, raw_dir, jobs, part_dir, refs)
        for outcome in outcomes:
            ctx.s3.upload_file(str(outcome.valid_path), ctx.bucket, prefix + outcome.valid_path.name)
            ctx.s3.upload_file(str(outcome.rejected_path), ctx.bucket, prefix + outcome.rejected_path.name)
            saved = part_dir / f"{outcome.number:05d}.outcome.json"
            save_outcome(outcome, saved)
            ctx.s3.upload_file(str(saved), ctx.bucket, prefix + saved.name)
    rows = sum(o.counts["rows_in"] for o in outcomes)
    seconds = round(time.perf_counter() - started, 3)
    log.info("files_validated", dataset=name, group=group, files=len(jobs), rows_in=rows, seconds=seconds)
    return {"status": "files_validated", "batch_id": ctx.batch_id, "dataset": name, "group": group, "files": len(jobs), "rows_in": rows}


def merge(ctx: common.TaskContext, cfg: PipelineConfig, layout: Layout, log: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Merge one dataset's file outcomes. Returns (the next stage's Map input, or None after the last
    dataset; the validation result so far, in `validate_batch`'s shape)."""
    document, stage, name = _load_plan(ctx, layout)
    versions = _versions(ctx, layout)
    prefix = layout.fanout_key(ctx.batch_id, f"{name}/")
    with common.work_dir("validate-merge") as tmp:
        part_dir, raw_dir, out_dir = Path(tmp) / "parts", Path(tmp) / "raw", Path(tmp) / "out"
        part_dir.mkdir()
        outcomes = []
        for number, _rel in enumerate(document["files"][name]):
            for suffix in ("outcome.json", "valid.csv", "rejected.csv"):
                common.download(ctx.s3, ctx.bucket, f"{prefix}{number:05d}.{suffix}", None, part_dir / f"{number:05d}.{suffix}")
            outcomes.append(load_outcome(part_dir / f"{number:05d}.outcome.json", part_dir))
        refs = _refs(ctx, cfg, layout, document, stage, Path(tmp))

        def raw_dir_of(rel: str) -> Path:
            common.download(ctx.s3, ctx.bucket, layout.raw_prefix + rel, versions.get(rel), raw_dir / rel)
            return raw_dir

        valid_keys = KeyTable()
        merged = merge_outcomes(cfg, name, raw_dir_of, part_dir, refs, outcomes, valid_keys)
        stats, _per_file = finish_dataset(cfg, name, out_dir, merged)
        common.upload_outputs(ctx.s3, ctx.bucket, layout, ctx.batch_id, name, out_dir)
        if is_referenced(cfg, name):
            save_keys(valid_keys, Path(tmp) / "keys.json")
            ctx.s3.upload_file(str(Path(tmp) / "keys.json"), ctx.bucket, layout.fanout_key(ctx.batch_id, f"refs/{name}.json"))
    document["datasets"][name] = stats
    common.put_json(ctx.s3, ctx.bucket, layout.validate_plan_key(ctx.batch_id), document)
    log.info("dataset_merged", dataset=name, files=len(merged), **{k: stats[k] for k in ("rows_in", "rows_valid", "rows_rejected")})
    datasets = {n: document["datasets"][n] for n in document["order"] if n in document["datasets"]}
    problems = threshold_problems(cfg, datasets)
    result = {
        "batch_id": ctx.batch_id,
        "datasets": datasets,
        "threshold_exceeded": bool(problems),
        "threshold_problems": problems,
        "seconds": round(time.time() - document["started_at"], 3),  # the whole fanned-out validation
    }
    if stage + 1 < len(document["order"]):
        return _stage(ctx.batch_id, document, stage + 1), result
    return None, result
