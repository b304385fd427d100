"""`kpipe plan`: the dry run of a batch against OUT (kpipe.dry_run), as tables or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from kpipe.cli_options import ENGINE_OPTION

CHANGES_SHOWN = 20


@click.command("plan")
@click.argument("batch_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="the OUT whose state the batch would meet")
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON instead of tables")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="pipeline.yaml to use (default: the project's pipeline.yaml)")
@ENGINE_OPTION
def plan_command(batch_dir: Path, out_dir: Path, as_json: bool, config_path: Path | None, engine: str | None) -> None:
    """What processing BATCH_DIR against OUT would do, writing nothing to OUT: rows valid and rejected
    by rule, and per KPI table the items created, changed (before -> after) and deleted."""
    from kpipe.cli import _load, dumps, err, out, validation_table
    from kpipe.dry_run import plan_batch
    from kpipe.process import BatchIncomplete

    cfg = _load(config_path)
    try:
        plan = plan_batch(cfg, batch_dir, out_dir, executor=engine)
    except BatchIncomplete as exc:
        err.print(f"[red]{exc}[/red]")
        raise SystemExit(2) from exc
    if as_json:
        click.echo(dumps(plan))
        return
    out.print(validation_table({"batches": [plan]}))
    for name, changes in plan["tables"].items():
        out.print(changes_table(name, cfg.kpis[name].key, changes))
    if plan.get("reason"):
        out.print(plan["reason"], highlight=False)


def changes_table(name: str, key: list[str], changes: dict[str, list[Any]]) -> Table:
    created, changed, deleted = (changes[k] for k in ("created", "changed", "deleted"))
    table = Table(title=f"{name}: {len(created)} created, {len(changed)} changed, {len(deleted)} deleted")
    for col in ("change", "key", "before", "after"):
        table.add_column(col)

    def text(item: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in item.items() if k not in key)

    rows = [("created", item, None, item) for item in created] + [("changed", c["after"], c["before"], c["after"]) for c in changed]
    rows += [("deleted", item, item, None) for item in deleted]
    for kind, item, before, after in rows[:CHANGES_SHOWN]:
        table.add_row(kind, " ".join(str(item.get(k)) for k in key), text(before) if before else "", text(after) if after else "")
    if len(rows) > CHANGES_SHOWN:
        table.caption = f"first {CHANGES_SHOWN} of {len(rows)} changes; --json for all"
    return table
