"""`kpipe run` and `kpipe serve`: the event-driven pipeline on the embedded emulator (kpipe.local)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from chalicelib.config import ConfigError
from kpipe.cli_options import ENGINE_OPTION


def _err() -> Any:
    from kpipe.cli import err

    return err


def _progress(message: str) -> None:
    _err().print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", highlight=False, soft_wrap=True)


_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="pipeline.yaml to upload to config/ (default: the project's pipeline.yaml)",
)
def _settle_option(default: int) -> Any:
    return click.option(
        "--settle-seconds",
        type=click.IntRange(0, 3600),
        default=default,
        show_default=True,
        help="trigger.settle_seconds in the uploaded pipeline.yaml (how long an execution waits for the rest "
        "of an upload before it snapshots raw-data/)",
    )


@click.command("run")
@click.argument("batch_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON instead of tables")
@_config_option
@_settle_option(1)
@click.option("--timeout", "timeout_seconds", type=float, default=1800, show_default=True, help="seconds to wait for one batch")
@ENGINE_OPTION
def run_command(
    batch_dirs: tuple[Path, ...],
    out_dir: Path,
    as_json: bool,
    config_path: Path | None,
    settle_seconds: int,
    timeout_seconds: float,
    engine: str | None,
) -> None:
    """The full event-driven pipeline on the embedded AWS emulator (no AWS account, no Docker).

    Starts moto, deploys infra/template.yaml into it, uploads each BATCH_DIR to raw-data/ one file at a
    time; S3 events reach the Chalice handler, which starts the state machine, whose ECS tasks run as local
    processes. Batches go in the order given; OUT keeps state across calls (as with `kpipe process`)."""
    from kpipe.cli import _load, exit_if_rejected, show_results
    from kpipe.local.runner import RunError, run_batches
    from kpipe.process import BatchIncomplete

    err = _err()
    cfg = _load(config_path)
    try:
        report = run_batches(
            list(batch_dirs), out_dir, config_path, settle_seconds=settle_seconds, progress=_progress,
            timeout_seconds=timeout_seconds, executor=engine,
        )
    except (BatchIncomplete, ConfigError) as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        sys.exit(2)
    except RunError as exc:
        err.print(f"[red]{exc}[/red] (task logs: {out_dir / 'logs'})", highlight=False)
        sys.exit(1)
    show_results(cfg, out_dir, report, as_json)
    if any(b.get("status") == "FAILED" for b in report["batches"]):
        err.print(f"[red]a batch failed; see its failure above and the task logs in {out_dir / 'logs'}[/red]")
        sys.exit(1)
    exit_if_rejected(report)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface for the emulator and the API")
@click.option("--port", type=int, default=0, help="emulator port (default: a free one)")
@click.option("--api-port", type=int, default=8000, show_default=True, help="port of `chalice local` (the KPI API)")
@_config_option
@_settle_option(5)
def serve_command(host: str, port: int, api_port: int, config_path: Path | None, settle_seconds: int) -> None:
    """The emulator and the KPI API on localhost until Ctrl-C: upload with the AWS CLI, query the API."""
    from kpipe.local.runner import RunError, serve

    err = _err()

    def ready(endpoints: dict[str, str]) -> None:
        aws = f"aws --endpoint-url {endpoints['aws_endpoint']} --region us-east-1"
        click.echo(
            "\n".join(
                [
                    "kpipe is serving (Ctrl-C to stop):",
                    f"  AWS endpoint (moto):  {endpoints['aws_endpoint']}",
                    f"  KPI API:              {endpoints['api']}",
                    f"  upload a batch:       {aws} s3 cp --recursive sample-data/batch-1 {endpoints['upload_to']}",
                    f"  query:                curl {endpoints['api']}/kpis/orders?from=2025-01-01&to=2025-12-31",
                    f"  executions:           {aws} stepfunctions list-executions --state-machine-arn {endpoints['state_machine']}",
                    "  (any credentials work, e.g. AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing)",
                ]
            )
        )

    try:
        serve(host=host, port=port, api_port=api_port, config_path=config_path, settle_seconds=settle_seconds,
              progress=_progress, ready=ready)
    except KeyboardInterrupt:
        pass
    except RunError as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(1)
    err.print("stopped")
