"""The control table adapter on moto: the lease protocol the state machine uses, and batch records."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from chalicelib.control import LOCK_KEY, ControlTable

A = "arn:aws:states:us-east-1:123456789012:execution:kpipe-pipeline:b-aaaaaaaaaaaaaaaaaaaa"
B = "arn:aws:states:us-east-1:123456789012:execution:kpipe-pipeline:b-bbbbbbbbbbbbbbbbbbbb"


@pytest.fixture
def control(kpi_tables: dict[str, Any]) -> ControlTable:
    return ControlTable(kpi_tables["KpipeControl"])


def test_the_lease_is_exclusive_reentrant_and_released_only_by_its_owner(control: ControlTable) -> None:
    assert control.lease() is None
    assert control.acquire(A, "b-a", acquired_at="2025-03-01T10:00:00Z")
    assert control.lease() == {"pk": LOCK_KEY, "owner": A, "batch_id": "b-a", "acquired_at": "2025-03-01T10:00:00Z"}
    assert control.acquire(A, "b-a")  # a retried acquire that had succeeded succeeds again
    assert not control.acquire(B, "b-b")
    assert not control.release(B)  # never frees someone else's lease
    assert control.lease()["owner"] == A
    assert control.release(A)
    assert control.lease() is None
    assert not control.release(A)  # releasing twice is a no-op
    assert control.acquire(B, "b-b")


def test_breaking_a_stale_lease_only_removes_that_owners_lease(control: ControlTable) -> None:
    assert control.acquire(A, "b-a")
    assert not control.break_lease(B)
    assert control.lease()["owner"] == A
    assert control.break_lease(A)
    assert control.acquire(B, "b-b")


def test_batch_records_follow_a_batch_and_keep_numbers_as_decimals(control: ControlTable, kpi_tables: dict[str, Any]) -> None:
    assert control.batch("b-a") is None
    running = control.mark_batch("b-a", "RUNNING", manifest_key="reports/b-a/manifest.json")
    assert running["status"] == "RUNNING" and "finished_at" not in running
    started = running["started_at"]
    done = control.mark_batch("b-a", "SUCCEEDED", seq=3, dates=2, report_key="reports/b-a/report.json", error=None)
    assert done["status"] == "SUCCEEDED"
    assert done["started_at"] == started  # kept from the first RUNNING
    assert done["finished_at"] and done["seq"] == 3 and "error" not in done
    raw = kpi_tables["KpipeControl"].get_item(Key={"pk": "batch#b-a"})["Item"]
    assert raw["seq"] == Decimal(3) and isinstance(raw["seq"], Decimal)
    assert control.batch("b-a")["manifest_key"] == "reports/b-a/manifest.json"
    with pytest.raises(ValueError, match="allowed: RUNNING, SUCCEEDED, FAILED, SKIPPED"):
        control.mark_batch("b-a", "DONE")
