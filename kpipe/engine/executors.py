"""The executors of a plan, by name: `engine.executor` in pipeline.yaml, or `--engine` on the command line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chalicelib.config import PipelineConfig

EXECUTORS = ("duckdb", "petl")


@contextmanager
def open_executor(cfg: PipelineConfig, work_dir: Path, name: str | None = None) -> Iterator[Any]:
    """The executor `name` (default: the config's), closed on the way out. Imported here, so that a
    host runs only the engine it uses (petl's is the reference; DuckDB's the default)."""
    chosen = name or cfg.engine.executor
    if chosen == "duckdb":
        from kpipe.engine.duckdb_executor import DuckDBExecutor as Executor
    elif chosen == "petl":
        from kpipe.engine.petl_executor import PetlExecutor as Executor  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown executor {chosen!r}; allowed: {', '.join(EXECUTORS)}")
    executor = Executor(cfg.engine, Path(work_dir), cfg.timezone)
    try:
        yield executor
    finally:
        executor.close()
