"""Route logic of the KPI read API, kept out of `app.py` so each handler there is one line.

Every function is handed what it reads (a KpiStore, an S3 client, ...) and returns plain JSON-ready data,
or raises chalice's BadRequestError (400: the request itself is wrong, with what is allowed) or
NotFoundError (404: well-formed, but nothing by that key). Numbers come out of DynamoDB as Decimal and
leave as JSON numbers, integers staying integers (`kpi_store.plain`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import ClientError
from chalice import BadRequestError, ConflictError, NotFoundError, Response

from chalicelib.batch import BATCH_ID_RE
from chalicelib.kpi_store import MAX_RANGE_DAYS, KpiStore, RangeTooLongError, days_between, plain
from chalicelib.layout import Layout
from chalicelib.trigger import ConfigLoader, RerunConflictError, UnknownBatchError, rerun

__all__ = [
    "category_kpis",
    "date_categories",
    "get_batch",
    "order_kpi",
    "order_kpis",
    "parse_date",
    "rerun_batch",
]

_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def parse_date(value: str | None, name: str) -> dt.date:
    """A strict YYYY-MM-DD date. `date.fromisoformat` alone would also accept `20250301` and `2025-W09`."""
    if value is None or value == "":
        raise BadRequestError(f"{name} is required; allowed: a date as YYYY-MM-DD")
    if not _DATE_RE.match(value):
        raise BadRequestError(f"{name}={value!r} is not a date; allowed: YYYY-MM-DD, e.g. 2025-03-01")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise BadRequestError(f"{name}={value!r} is not a calendar date ({exc}); allowed: YYYY-MM-DD") from exc


def _param(params: Mapping[str, str] | None, name: str) -> str | None:
    return None if params is None else params.get(name)


def _check_range(start: dt.date, end: dt.date) -> None:
    if start > end:
        raise BadRequestError(f"from={start.isoformat()} is after to={end.isoformat()}; allowed: from <= to")


def order_kpi(store: KpiStore, date: str) -> dict[str, Any]:
    """GET /kpis/orders/{date}"""
    day = parse_date(date, "date").isoformat()
    item = store.order_kpi(day)
    if item is None:
        raise NotFoundError(f"no OrderKPI for {day}")
    return plain(item)


def order_kpis(store: KpiStore, params: Mapping[str, str] | None) -> dict[str, Any]:
    """GET /kpis/orders?from=&to= : both bounds required, inclusive, at most MAX_RANGE_DAYS days, because
    OrderKPI is keyed by date alone and a range is one point read per day."""
    start = parse_date(_param(params, "from"), "from")
    end = parse_date(_param(params, "to"), "to")
    _check_range(start, end)
    try:
        days_between(start, end)
    except RangeTooLongError as exc:
        raise BadRequestError(f"{exc}; allowed: at most {MAX_RANGE_DAYS} days per request") from exc
    items = store.orders_between(start, end)
    return {"from": start.isoformat(), "to": end.isoformat(), "items": plain(items)}


def category_kpis(store: KpiStore, category: str, params: Mapping[str, str] | None) -> dict[str, Any]:
    """GET /kpis/categories/{category}?from=&to= : both bounds optional (open-ended), inclusive.

    404 when the category has no item at all; a known category with nothing in the range is a 200 with no
    items (the range is not a key)."""
    name = unquote(category)
    raw_from, raw_to = _param(params, "from"), _param(params, "to")
    start = parse_date(raw_from, "from") if raw_from else None
    end = parse_date(raw_to, "to") if raw_to else None
    if start is not None and end is not None:
        _check_range(start, end)
    items = store.category_between(
        name, start.isoformat() if start else None, end.isoformat() if end else None
    )
    if not items and not store.category_exists(name):
        raise NotFoundError(f"no CategoryKPI for category {name!r}")
    return {
        "category": name,
        "from": start.isoformat() if start else None,
        "to": end.isoformat() if end else None,
        "items": plain(items),
    }


def date_categories(store: KpiStore, date: str) -> dict[str, Any]:
    """GET /kpis/dates/{date}/categories : through the `order_date-index` GSI of CategoryKPI."""
    day = parse_date(date, "date").isoformat()
    items = store.categories_of_date(day)
    if not items:
        raise NotFoundError(f"no CategoryKPI for {day}")
    return {"order_date": day, "items": plain(items)}


def _check_batch_id(batch_id: str) -> None:
    if not BATCH_ID_RE.match(batch_id):
        raise BadRequestError(f"{batch_id!r} is not a batch id; allowed: b- followed by 20 hex digits")


def _read_json(s3: Any, bucket: str, key: str) -> Any | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return json.loads(body)


def get_batch(s3: Any, bucket: str, layout: Layout, batch_id: str) -> dict[str, Any]:
    """GET /batches/{batch_id}: the batch report once a task wrote one, else the manifest as "pending"."""
    _check_batch_id(batch_id)
    report = _read_json(s3, bucket, layout.report_key(batch_id))
    if report is not None:
        status = report.get("status", "reported") if isinstance(report, dict) else "reported"
        return {"batch_id": batch_id, "status": status, "report": plain(report)}
    manifest = _read_json(s3, bucket, layout.manifest_key(batch_id))
    if manifest is not None:
        return {"batch_id": batch_id, "status": "pending", "manifest": plain(manifest)}
    raise NotFoundError(f"unknown batch {batch_id}")


def rerun_batch(
    s3: Any, sfn: Any, bucket: str, batch_id: str, cfg_loader: ConfigLoader, state_machine_arn: str
) -> Response:
    """POST /batches/{batch_id}/rerun: 202 with the new execution, 404 unknown batch, 409 when it can't run now."""
    _check_batch_id(batch_id)
    try:
        outcome = rerun(s3, sfn, bucket, batch_id, cfg_loader, state_machine_arn)
    except UnknownBatchError as exc:
        raise NotFoundError(str(exc)) from exc
    except RerunConflictError as exc:
        raise ConflictError(str(exc)) from exc
    return Response(body=outcome.to_dict(), status_code=202, headers={"Content-Type": "application/json"})
