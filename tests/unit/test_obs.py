"""JSON-lines logs and EMF metrics: the exact shapes CloudWatch Logs Insights and EMF extraction need."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from chalicelib import obs


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_logger_emits_one_json_object_per_line_with_bound_fields(capsys: pytest.CaptureFixture[str]) -> None:
    log = obs.get_logger(component="trigger", batch_id="b-123")
    log.info("execution_started", attempt=2, amount=Decimal("12.50"), count=Decimal("3"))
    log.warning("second")
    lines = _lines(capsys.readouterr().out)
    assert len(lines) == 2
    first = lines[0]
    assert first["event"] == "execution_started"
    assert first["level"] == "info"
    assert first["batch_id"] == "b-123"
    assert first["component"] == "trigger"
    assert first["attempt"] == 2
    assert first["amount"] == 12.5
    assert first["count"] == 3 and isinstance(first["count"], int)
    assert first["timestamp"].endswith("Z")
    assert lines[1]["level"] == "warning"
    assert lines[1]["batch_id"] == "b-123"


def test_configure_is_idempotent_and_debug_is_filtered(capsys: pytest.CaptureFixture[str]) -> None:
    obs.configure()
    obs.configure()
    log = obs.get_logger()
    log.debug("not shown")
    log.info("shown")
    lines = _lines(capsys.readouterr().out)
    assert [line["event"] for line in lines] == ["shown"]


def test_bind_returns_new_logger_without_leaking_fields(capsys: pytest.CaptureFixture[str]) -> None:
    base = obs.get_logger(component="x")
    base.bind(batch_id="b-1").info("a")
    base.info("b")
    a, b = _lines(capsys.readouterr().out)
    assert a["batch_id"] == "b-1"
    assert "batch_id" not in b


def test_exception_is_rendered_into_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    log = obs.get_logger()
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        log.exception("failed")
    (line,) = _lines(capsys.readouterr().out)
    assert line["level"] == "error"
    assert "RuntimeError: kaput" in line["exception"]


def test_emit_metrics_prints_an_emf_envelope(capsys: pytest.CaptureFixture[str]) -> None:
    obs.emit_metrics(
        "kpipe",
        {"Stage": "validate", "Dataset": "orders"},
        {"RowsValid": (980, "Count"), "Duration": (1.25, "Seconds")},
        batch_id="b-9",
    )
    (line,) = _lines(capsys.readouterr().out)
    aws = line["_aws"]
    assert isinstance(aws["Timestamp"], int) and aws["Timestamp"] > 1_600_000_000_000
    (directive,) = aws["CloudWatchMetrics"]
    assert directive["Namespace"] == "kpipe"
    assert directive["Dimensions"] == [["Stage", "Dataset"]]
    assert directive["Metrics"] == [{"Name": "RowsValid", "Unit": "Count"}, {"Name": "Duration", "Unit": "Seconds"}]
    assert line["RowsValid"] == 980
    assert line["Duration"] == 1.25
    assert line["Stage"] == "validate" and line["Dataset"] == "orders"
    assert line["batch_id"] == "b-9"


def test_emf_record_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown EMF unit"):
        obs.emf_record("kpipe", {}, {"X": (1, "Things")})
    with pytest.raises(ValueError, match="at least one metric"):
        obs.emf_record("kpipe", {}, {})
    with pytest.raises(ValueError, match="clash"):
        obs.emf_record("kpipe", {"X": "a"}, {"X": (1, "Count")})
    with pytest.raises(TypeError, match="must be a number"):
        obs.emf_record("kpipe", {}, {"X": ("1", "Count")})  # type: ignore[dict-item]


def test_emf_record_timestamp_can_be_pinned() -> None:
    record = obs.emf_record("ns", {"Stage": "t"}, {"N": (1, "Count")}, timestamp_ms=42)
    assert record["_aws"]["Timestamp"] == 42
