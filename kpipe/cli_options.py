"""Options more than one command takes."""

from __future__ import annotations

import click

ENGINE_OPTION = click.option(
    "--engine",
    type=click.Choice(["duckdb", "petl"]),
    default=None,
    help="the executor (default: engine.executor in pipeline.yaml): duckdb is fast, petl is the reference",
)
