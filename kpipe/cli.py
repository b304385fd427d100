"""The `kpipe` command line: human-readable tables by default, JSON with `--json`."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from chalicelib.config import ConfigError, PipelineConfig, default_config_path, json_schema, load_config
from kpipe.cli_options import ENGINE_OPTION
from kpipe.tables import dumps, load_table, table_view

err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="pipeline.yaml to use (default: the project's pipeline.yaml)",
)


def _load(config_path: Path | None) -> PipelineConfig:
    path = config_path or default_config_path()
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[red]{exc.source} is invalid:[/red]")
        for problem in exc.problems:
            err.print(f"  - {problem}", markup=False, highlight=False)
        sys.exit(2)


class _LazyGroup(click.Group):
    """Commands that live in their own modules are imported when invoked or listed, not at start-up
    (click's documented lazy-loading pattern): `kpipe process` does not pay for the generator's and
    the emulator's imports (~10 ms)."""

    LAZY = {
        "generate": ("kpipe.generate", "generate_command"),
        "plan": ("kpipe.cli_plan", "plan_command"),
        "history": ("kpipe.cli_history", "history_command"),
        "run": ("kpipe.cli_local", "run_command"),
        "serve": ("kpipe.cli_local", "serve_command"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            module, attr = self.LAZY[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="kpipe")
def main() -> None:
    """kpipe: e-commerce CSV batches -> validated rows -> daily KPIs (DynamoDB CategoryKPI, OrderKPI)."""


@main.command("check-config")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--explain", is_flag=True, help="also print the plan: rules, derived fields, KPI groupings and the SQL")
@click.option(
    "--against",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="an OUT of `kpipe process`: say what the changes since its last batch mean for older dates",
)
def check_config(path: Path | None, explain: bool, against: Path | None) -> None:
    """Validate pipeline.yaml; exit 0 when valid, 2 with every problem listed."""
    cfg = _load(path)
    if against is not None:
        from kpipe.config_changes import CONFIG, backfill_notes

        summary = against / "processed" / CONFIG
        if not summary.is_file():
            err.print(f"{against} holds no processed batch (no {summary}); nothing to compare with")
        else:
            notes = backfill_notes(json.loads(summary.read_text(encoding="utf-8")), cfg)
            for note in notes or ["no change since the last batch processed there"]:
                out.print(f"  - {note}", highlight=False)
    if explain:
        from kpipe.engine.duckdb_executor import plan_sql
        from kpipe.engine.plan import compile_plan, explain_text

        plan = compile_plan(cfg)
        click.echo(explain_text(plan, plan_sql(plan)), nl=False)
    tables = ", ".join(f"{name} ({len(t.metrics)} metrics)" for name, t in cfg.kpis.items())
    out.print(f"{path or default_config_path()}: valid - datasets: {', '.join(cfg.datasets)}; KPI tables: {tables}")


@main.command("schema")
def schema() -> None:
    """Print the JSON Schema of pipeline.yaml (published as pipeline.schema.json)."""
    click.echo(json_schema(), nl=False)


@main.command("template")
@CONFIG_OPTION
@click.option("--compact", is_flag=True, help="one line, as deployed (CloudFormation caps an inline body at 51,200 bytes)")
def template(config_path: Path | None, compact: bool) -> None:
    """Print the CloudFormation template (JSON) rendered for pipeline.yaml: infra/template.yaml with the state
    machine inlined and one DynamoDB table per `kpis:` table, with its IAM grants and KPIPE_KPI_TABLES."""
    from kpipe import infra

    cfg = _load(config_path)
    try:
        rendered = infra.render_template_dict(cfg=cfg)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        sys.exit(2)
    click.echo(json.dumps(rendered, separators=(",", ":")) if compact else json.dumps(rendered, indent=2))


@main.command("process")
@click.argument("batch_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON instead of tables")
@ENGINE_OPTION
@CONFIG_OPTION
def process(batch_dirs: tuple[Path, ...], out_dir: Path, as_json: bool, engine: str | None, config_path: Path | None) -> None:
    """Validate and transform BATCH_DIRs (in order) on local files; OUT keeps state across calls."""
    from kpipe.process import BatchIncomplete, process_batches

    cfg = _load(config_path)
    try:
        report = process_batches(
            cfg, list(batch_dirs), out_dir, progress=lambda m: err.print(m, highlight=False), executor=engine
        )
    except BatchIncomplete as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(2)
    show_results(cfg, out_dir, report, as_json)
    exit_if_rejected(report)


EXIT_REJECTED = 3  # a batch over its reject_threshold: nothing of it applied (FAILED is 1, a refused input 2)


def exit_if_rejected(report: dict[str, Any]) -> None:
    """Scripts must not take a REJECTED batch for a good one: exit 3 naming it."""
    rejected = [b["batch_id"] for b in report["batches"] if b.get("status") == "REJECTED"]
    if rejected:
        err.print(f"[red]rejected (over reject_threshold, nothing applied): {', '.join(rejected)}[/red]", highlight=False)
        sys.exit(EXIT_REJECTED)


def show_results(cfg: PipelineConfig, out_dir: Path, report: dict[str, Any], as_json: bool) -> None:
    """Print the validation summary and the KPI tables (shared by `process` and `run`)."""
    if as_json:
        tables = {name: load_table(out_dir / f"{name}.json") for name in cfg.kpis}
        click.echo(dumps({"report": report, "tables": tables}))
        return
    out.print(validation_table(report))
    for name in cfg.kpis:
        out.print(kpi_table(name, cfg.kpis[name].key, *table_view(out_dir / f"{name}.json", KPI_ROWS_SHOWN)))
    failed = [b["batch_id"] for b in report["batches"] if b.get("status") not in ("SUCCEEDED", "SKIPPED")]
    if failed:
        err.print(f"[yellow]batches not applied: {', '.join(failed)}[/yellow]")


def validation_table(report: dict[str, Any]) -> Table:
    table = Table(title="Validation summary")
    for col in ("batch", "status", "dataset", "rows in", "valid", "rejected", "top reasons"):
        table.add_column(col, justify="right" if col in ("rows in", "valid", "rejected") else "left")
    for batch in report["batches"]:
        for i, (name, stats) in enumerate(batch.get("datasets", {}).items()):
            reasons = sorted(stats.get("reasons", {}).items(), key=lambda kv: -kv[1])[:3]
            table.add_row(
                batch["batch_id"] if i == 0 else "",
                batch.get("status", "") if i == 0 else "",
                name,
                str(stats["rows_in"]),
                str(stats["rows_valid"]),
                str(stats["rows_rejected"]),
                ", ".join(f"{r} {n}" for r, n in reasons),
            )
    return table


KPI_ROWS_SHOWN = 40


def kpi_table(name: str, key: list[str], count: int, items: list[dict[str, Any]], fields: set[str]) -> Table:
    """The first `items` of a table of `count` (`tables.table_view`)."""
    metrics = sorted(fields - set(key))
    table = Table(title=f"{name} ({count} items{', first ' + str(len(items)) if count > len(items) else ''})")
    for col in [*key, *metrics]:
        table.add_column(col, justify="left" if col in key else "right")
    for item in items:
        table.add_row(*(str(item.get(c, "")) for c in [*key, *metrics]))
    return table


if __name__ == "__main__":
    main()
