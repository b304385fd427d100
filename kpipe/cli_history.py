"""`kpipe history`: the quality history of an OUT (kpipe.history), as a table or JSON."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from kpipe import history

REASONS_SHOWN = 4  # per row of the table; --json has them all


@click.command("history")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--dataset", default=None, help="only this dataset's counts")
@click.option("--rule", default=None, help="only the batches in which this rule (e.g. sale_price.gt) rejected rows")
@click.option("--json", "as_json", is_flag=True, help="print the history as JSON instead of a table")
def history_command(out_dir: Path, dataset: str | None, rule: str | None, as_json: bool) -> None:
    """One row per batch processed into OUT, oldest first: rows in, valid, rejected, the reasons, and
    the trend of the rejected fraction."""
    from kpipe.cli import dumps, out

    lines = history.read(out_dir, dataset, rule)
    if as_json:
        click.echo(dumps(lines))
        return
    table = Table(title=f"Quality history of {out_dir} ({len(lines)} batches)")
    for col in ("at", "batch", "seq", "status", "dataset", "rows in", "valid", "rejected", "reasons"):
        table.add_column(col, justify="right" if col in ("seq", "rows in", "valid", "rejected") else "left")
    for line in lines:
        for i, (name, stats) in enumerate(line["datasets"].items()):
            head = [line["at"], line["batch_id"], str(line["seq"] or ""), str(line["status"])] if i == 0 else ["", "", "", ""]
            top = sorted(stats["reasons"].items(), key=lambda kv: -kv[1])
            reasons = ", ".join(f"{r} {n}" for r, n in top[:REASONS_SHOWN]) + (f", {len(top) - REASONS_SHOWN} more" if len(top) > REASONS_SHOWN else "")
            table.add_row(*head, name, str(stats["rows_in"]), str(stats["rows_valid"]), str(stats["rows_rejected"]), reasons)
    trend = [history.rejected_fraction(line) for line in lines]
    if trend:
        table.caption = f"rejected fraction, oldest to newest: {history.sparkline(trend)} (last {trend[-1]:.2%}, max {max(trend):.2%})"
    out.print(table)
