"""Observability shared by the Lambda, the ECS tasks and the CLI: JSON-lines logs and CloudWatch metrics.

Why JSON lines on stdout: Lambda and the ECS awslogs driver both ship stdout to CloudWatch Logs line by
line, and CloudWatch Logs Insights parses one JSON object per line into queryable fields, so a log line
carrying `batch_id` lets an operator follow one batch across the Lambda and both tasks.

Why Embedded Metric Format for metrics: a specially shaped JSON log line becomes a CloudWatch metric
without any PutMetricData call (no extra API latency, no extra IAM permission, no failure mode in the hot
path). Locally the same line is just printed.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, TextIO

import structlog

__all__ = ["configure", "emf_record", "emit_metrics", "get_logger"]

# CloudWatch EMF units (the subset that makes sense for this pipeline, plus the generic ones).
EMF_UNITS = frozenset(
    {
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Count",
        "Percent",
        "Count/Second",
        "None",
    }
)

_lock = threading.Lock()
_configured = False


def _json_default(value: Any) -> Any:
    """Decimals (DynamoDB numbers, money) stay numbers in logs; anything else falls back to str."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def _dumps(obj: Any, **_: Any) -> str:
    return json.dumps(obj, default=_json_default, separators=(",", ":"), sort_keys=False)


def _print_stdout(line: str, stream: TextIO | None = None) -> None:
    """Write one line and flush: a container killed right after must not lose the line in a buffer."""
    out = stream if stream is not None else sys.stdout
    out.write(line + "\n")
    out.flush()


class _StdoutLogger:
    """A structlog logger that resolves `sys.stdout` at call time.

    structlog's PrintLogger binds the stream when created; pytest's capsys and the local runner swap
    sys.stdout later, so resolving it per call keeps every line where the caller currently expects it."""

    def msg(self, message: str) -> None:
        _print_stdout(message)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _logger_factory(*_: Any) -> _StdoutLogger:
    return _StdoutLogger()


def configure(level: int | str = logging.INFO, *, force: bool = False) -> None:
    """Configure structlog once per process (idempotent; `force=True` re-applies, e.g. a new level).

    Called lazily by `get_logger`, so importing this module has no side effect and the Lambda, the tasks
    and the tests all get the same JSON shape without each having to remember to set it up."""
    global _configured
    with _lock:
        if _configured and not force:
            return
        if isinstance(level, str):
            level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(serializer=_dumps),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=_logger_factory,
            cache_logger_on_first_use=True,
        )
        _configured = True


def get_logger(**bound: Any) -> structlog.typing.FilteringBoundLogger:
    """A structlog BoundLogger emitting one JSON object per line to stdout, with `bound` on every line.

    Example: `log = get_logger(component="trigger", batch_id=bid); log.info("execution_started")` prints
    `{"component":"trigger","batch_id":"b-...","event":"execution_started","level":"info","timestamp":...}`.
    """
    configure()
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(**bound)
    return logger


def emf_record(
    namespace: str,
    dimensions: Mapping[str, str],
    metrics: Mapping[str, tuple[float | int | Decimal, str]],
    timestamp_ms: int | None = None,
    **properties: Any,
) -> dict[str, Any]:
    """Build one Embedded Metric Format object (pure; `emit_metrics` prints it).

    Dimensions become the single dimension set; extra `properties` ride along as searchable log fields
    (e.g. `batch_id`) without becoming dimensions, which would create one metric per batch (costly)."""
    if not metrics:
        raise ValueError("emit at least one metric")
    clash = (set(dimensions) | set(properties)) & set(metrics)
    if clash:
        raise ValueError(f"metric names clash with dimensions/properties: {sorted(clash)}")
    definitions = []
    record: dict[str, Any] = {}
    for name, (value, unit) in metrics.items():
        if unit not in EMF_UNITS:
            raise ValueError(f"unknown EMF unit {unit!r} for metric {name!r}; allowed: {sorted(EMF_UNITS)}")
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")
        definitions.append({"Name": name, "Unit": unit})
        record[name] = value
    record["_aws"] = {
        "Timestamp": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
        "CloudWatchMetrics": [
            {
                "Namespace": namespace,
                "Dimensions": [list(dimensions)],
                "Metrics": definitions,
            }
        ],
    }
    record.update({k: str(v) for k, v in dimensions.items()})
    record.update(properties)
    return record


def emit_metrics(
    namespace: str,
    dimensions: dict[str, str],
    metrics: dict[str, tuple[float | int, str]],
    **properties: Any,
) -> None:
    """Print one CloudWatch EMF JSON line to stdout: `metrics` maps name -> (value, unit).

    Example: `emit_metrics("kpipe", {"Stage": "validate"}, {"RowsValid": (980, "Count")}, batch_id=bid)`."""
    _print_stdout(_dumps(emf_record(namespace, dimensions, metrics, **properties)))
