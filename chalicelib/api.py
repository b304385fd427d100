"""Route logic of the KPI read API, kept out of `app.py` so each handler there is one line.

Every function is handed what it reads (a KpiStore, an S3 client, ...) and returns plain JSON-ready data,
or raises chalice's BadRequestError (400: the request itself is wrong, with what is allowed) or
NotFoundError (404: well-formed, but nothing by that key). Numbers come out of DynamoDB as Decimal and
leave as JSON numbers, integers staying integers (`kpi_store.plain`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import ClientError
from chalice import BadRequestError, ConflictError, NotFoundError, Response

from chalicelib.batch import BATCH_ID_RE
from chalicelib.kpi_store import (
    MAX_RANGE_DAYS,
    KpiStore,
    KpiTableStore,
    QueryError,
    RangeTooLongError,
    days_between,
    plain,
)
from chalicelib.layout import Layout
from chalicelib.trigger import ConfigLoader, RerunConflictError, UnknownBatchError, rerun

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "category_kpis",
    "date_categories",
    "decode_token",
    "encode_token",
    "get_batch",
    "kpi_items",
    "order_kpi",
    "order_kpis",
    "parse_date",
    "rerun_batch",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CONTROL_PARAMS = ("from", "to", "index", "limit", "next")

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


# --------------------------------------------------------------------------------------------------
# GET /kpis/{table}: any table of pipeline.yaml


def encode_token(last_key: Mapping[str, Any] | None) -> str | None:
    """DynamoDB's LastEvaluatedKey as an opaque URL-safe token: base64 of typed JSON (`{"attr": {"S": ...}}`,
    numbers as exact text), so a Decimal key survives the round trip."""
    if not last_key:
        return None
    typed = {
        name: {"N": str(value)} if isinstance(value, Decimal | int) and not isinstance(value, bool) else {"S": str(value)}
        for name, value in last_key.items()
    }
    return base64.urlsafe_b64encode(json.dumps(typed, separators=(",", ":"), sort_keys=True).encode()).decode().rstrip("=")


def decode_token(token: str) -> dict[str, Any]:
    """The LastEvaluatedKey a token stands for; BadRequestError when it is not one `encode_token` made."""
    bad = BadRequestError(f"next={token!r} is not a page token; allowed: the `next` of the previous page, as it came")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(decoded, dict) or not decoded:
        raise bad
    key: dict[str, Any] = {}
    for name, typed in decoded.items():
        if not isinstance(typed, dict) or len(typed) != 1:
            raise bad
        (kind, value), = typed.items()
        if kind == "S" and isinstance(value, str):
            key[name] = value
        elif kind == "N" and isinstance(value, str):
            try:
                key[name] = Decimal(value)
            except ArithmeticError:
                raise bad from None
        else:
            raise bad
    return key


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not re.fullmatch(r"[0-9]{1,7}", raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequestError(f"limit={raw!r} is not allowed; allowed: an integer from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})")
    return int(raw)


def _table_store(store: KpiStore, table: str) -> KpiTableStore:
    name = unquote(table)
    if name not in store.tables:
        raise NotFoundError(f"unknown KPI table {name!r}; the tables are: {', '.join(store.tables)}")
    return store.tables[name]


def kpi_items(store: KpiStore, table: str, params: Mapping[str, str] | None) -> dict[str, Any]:
    """GET /kpis/{table}: one page of a KPI table's items, by logical table name (as under `kpis:`).

    Query parameters: `<key field>=<value>` (equality, any key field), `from`/`to` (inclusive bounds on the
    range key of the key condition used: the table's when its hash key is given, else the index's),
    `index=<name>` (read that index; its hash key must be given), `limit` (1..1000, default 100) and `next`
    (the token of the previous page). The table is read by its hash key when given, else through an index
    whose hash key is given (the period index first: `?order_date=2025-03-01` on CategoryKPI), else
    scanned. Returns `{"table", "items", "next"}`; `next` is null on the last page."""
    tstore = _table_store(store, table)
    shape = tstore.shape
    params = dict(params or {})
    allowed = [*shape.key, *_CONTROL_PARAMS]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BadRequestError(f"unknown query parameter {', '.join(unknown)} for {shape.name}; allowed: {', '.join(allowed)}")
    for name, value in params.items():
        if value == "" and name != "limit":
            raise BadRequestError(f"{name} is empty; allowed: {name}=<value>, or leave it out")
    limit = _limit(params.get("limit"))
    start_key = decode_token(params["next"]) if params.get("next") else None
    equals = {k: params[k] for k in shape.key if k in params}
    try:
        page = tstore.select(
            equals, index=params.get("index"), lower=params.get("from"), upper=params.get("to"),
            limit=limit, start_key=start_key,
        )
    except QueryError as exc:
        raise BadRequestError(f"{shape.name}: {exc}") from exc
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ValidationException" and start_key is not None:
            raise BadRequestError(f"next does not continue this query ({exc.response['Error'].get('Message')}); "
                                  "allowed: the `next` of the previous page of the same query") from exc
        raise
    return {"table": shape.name, "items": plain(page.items), "next": encode_token(page.last_key)}


# --------------------------------------------------------------------------------------------------
# The routes of the default tables (OrderKPI, CategoryKPI)


def _default_table(store: KpiStore, name: str) -> None:
    if name not in store.tables:
        raise NotFoundError(
            f"pipeline.yaml declares no {name} table, which this route reads; "
            f"GET /kpis/{{table}} reads any of: {', '.join(store.tables)}"
        )


def order_kpi(store: KpiStore, date: str) -> dict[str, Any]:
    """GET /kpis/orders/{date}"""
    _default_table(store, KpiStore.ORDER)
    day = parse_date(date, "date").isoformat()
    item = store.order_kpi(day)
    if item is None:
        raise NotFoundError(f"no OrderKPI for {day}")
    return plain(item)


def order_kpis(store: KpiStore, params: Mapping[str, str] | None) -> dict[str, Any]:
    """GET /kpis/orders?from=&to= : both bounds required, inclusive, at most MAX_RANGE_DAYS days, because
    OrderKPI is keyed by date alone and a range is one point read per day."""
    _default_table(store, KpiStore.ORDER)
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
    _default_table(store, KpiStore.CATEGORY)
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
    _default_table(store, KpiStore.CATEGORY)
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
