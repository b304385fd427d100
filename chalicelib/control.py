"""The control table (`KpipeControl`): the pipeline lease and one record per batch.

The lease (`pk = lock#pipeline`) serialises processing: the transform engine is not safe to run twice at
once on one processed store. The state machine takes and gives it back itself with native DynamoDB
integrations (`stepfunctions/pipeline.asl.json`: AcquireLease, Release*, BreakLease); this class speaks
the same protocol, for the tasks, the tests and an operator:

- acquire: `PutItem` of `{pk, owner, batch_id, acquired_at}` if `attribute_not_exists(pk) OR owner = :me`
  (re-entrant: a retried acquire that had succeeded succeeds again);
- release: `DeleteItem` if `owner = :me` (never frees someone else's lease);
- break: `DeleteItem` if `owner = :stale`, done only when the owner execution is no longer RUNNING.

A lease has no clock-based expiry: JSONPath ASL has no clock to compute one, and an owner that ends
without releasing (a stopped or timed-out execution) is detected exactly by asking Step Functions.

Batch records (`pk = batch#<batch_id>`) follow a batch: RUNNING (validate started), then SUCCEEDED,
FAILED or SKIPPED, with timestamps, the report key and, when known, the processing sequence number.

Handed its boto3 Table resource (moto in tests), as chalice's samples do; no other AWS here.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

__all__ = ["LOCK_KEY", "STATUSES", "ControlTable"]

LOCK_KEY = "lock#pipeline"
STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "SKIPPED")


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _is_conditional_failure(exc: Exception) -> bool:
    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
    return code == "ConditionalCheckFailedException"


def _plain(value: Any) -> Any:
    """DynamoDB numbers back to int/float for callers that print or compare them."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class ControlTable:
    """Lease and batch records in the control table, given its boto3 `Table` resource."""

    def __init__(self, table: Any) -> None:
        self.table = table

    # lease ------------------------------------------------------------------------------------
    def lease(self) -> dict[str, Any] | None:
        """The current lease item (`owner`, `batch_id`, `acquired_at`), or None when free."""
        item = self.table.get_item(Key={"pk": LOCK_KEY}, ConsistentRead=True).get("Item")
        return _plain(item) if item else None

    def acquire(self, owner: str, batch_id: str, acquired_at: str | None = None) -> bool:
        """Take the lease for `owner` (an execution ARN); False when someone else holds it."""
        return self._if_owner(
            self.table.put_item,
            owner,
            Item={"pk": LOCK_KEY, "owner": owner, "batch_id": batch_id, "acquired_at": acquired_at or _now_iso()},
            ConditionExpression="attribute_not_exists(pk) OR #owner = :me",
        )

    def release(self, owner: str) -> bool:
        """Give the lease back if `owner` holds it; False (and nothing changed) otherwise."""
        return self._delete_if_owner(owner)

    def break_lease(self, stale_owner: str) -> bool:
        """Free a lease whose owner has ended without releasing it (the caller checked that it ended)."""
        return self._delete_if_owner(stale_owner)

    def _delete_if_owner(self, owner: str) -> bool:
        return self._if_owner(self.table.delete_item, owner, Key={"pk": LOCK_KEY}, ConditionExpression="#owner = :me")

    @staticmethod
    def _if_owner(operation: Any, owner: str, **request: Any) -> bool:
        """Run a write conditioned on the lease owner (`#owner`/`:me`); False when the condition fails."""
        try:
            operation(**request, ExpressionAttributeNames={"#owner": "owner"}, ExpressionAttributeValues={":me": owner})
        except Exception as exc:
            if _is_conditional_failure(exc):
                return False
            raise
        return True

    # batch records ------------------------------------------------------------------------------
    @staticmethod
    def batch_key(batch_id: str) -> str:
        return f"batch#{batch_id}"

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"pk": self.batch_key(batch_id)}, ConsistentRead=True).get("Item")
        return _plain(item) if item else None

    def mark_batch(self, batch_id: str, status: str, **fields: Any) -> dict[str, Any]:
        """Set a batch's status (and any extra fields); idempotent, so a retried task may call it again.

        `started_at` is kept from the first RUNNING; `updated_at` is always now; SUCCEEDED, FAILED and
        SKIPPED also set `finished_at`. Numbers are stored as Decimal, None values are left out."""
        if status not in STATUSES:
            raise ValueError(f"unknown batch status {status!r}; allowed: {', '.join(STATUSES)}")
        now = _now_iso()
        values: dict[str, Any] = {"status": status, "batch_id": batch_id, "updated_at": now}
        if status != "RUNNING":
            values["finished_at"] = now
        values.update({k: v for k, v in fields.items() if v is not None})
        names = {f"#f{i}": name for i, name in enumerate(values)}
        attr_values = {f":v{i}": _to_dynamo(value) for i, value in enumerate(values.values())}
        sets = [f"#f{i} = :v{i}" for i in range(len(values))]
        names["#started"] = "started_at"
        attr_values[":now"] = now
        sets.append("#started = if_not_exists(#started, :now)")
        resp = self.table.update_item(
            Key={"pk": self.batch_key(batch_id)},
            UpdateExpression="SET " + ", ".join(sets),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=attr_values,
            ReturnValues="ALL_NEW",
        )
        return _plain(resp["Attributes"])


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value
