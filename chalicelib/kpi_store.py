"""DynamoDB adapter for the KPI tables: replace a day's items (writer side), look them up (API side).

Why "replace dates" rather than "put items": a date's KPIs are recomputed whole from every valid row
received so far, so the new set of items of a touched date is complete. A category that no longer has
items on that date (its items moved to another date, or were replaced) must disappear; putting the new
items alone would leave it behind. So: read the keys the date has now, put the new items, delete the
keys not in the new set. Puts go before deletes (one batch writer, in order), so a reader never sees a
date emptier than either the old or the new state.

Why numbers are checked: DynamoDB numbers are exact decimals; a float reaching it would either be refused
by boto3 or (after a str() round trip) store binary noise such as 49.500000000000001. Every number must
be `Decimal` or `int`; anything else is refused before the first write, so a bad item never half-applies.

Table shapes are the contract of docs/contracts.md: `CategoryKPI` (partition `category`, sort
`order_date`, GSI `order_date-index`) and `OrderKPI` (partition `order_date`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import Key

__all__ = [
    "MAX_RANGE_DAYS",
    "KpiStore",
    "KpiTableStore",
    "RangeTooLongError",
    "ReplaceStats",
    "check_numbers",
    "days_between",
    "dump_table",
    "plain",
]

MAX_RANGE_DAYS = 366  # a leap year: the longest range the orders endpoint answers with point reads
_BATCH_GET_LIMIT = 100  # BatchGetItem: at most 100 keys per request
_BATCH_GET_ATTEMPTS = 8


class RangeTooLongError(ValueError):
    """A date range longer than MAX_RANGE_DAYS days (inclusive)."""


@dataclass(frozen=True)
class ReplaceStats:
    put: int
    deleted: int


def check_numbers(value: Any, path: str = "item") -> None:
    """Refuse floats (and non-finite Decimals) anywhere in an item; see the module doc for why."""
    if isinstance(value, bool) or value is None or isinstance(value, str | bytes | int):
        return
    if isinstance(value, float):
        raise TypeError(f"{path}: float {value!r} would reach DynamoDB; use Decimal")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{path}: {value} is not a finite number; DynamoDB refuses it")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_numbers(v, f"{path}.{k}")
        return
    if isinstance(value, list | tuple | set | frozenset):
        for i, v in enumerate(value):
            check_numbers(v, f"{path}[{i}]")
        return
    raise TypeError(f"{path}: {type(value).__name__} is not a DynamoDB type")


def plain(value: Any) -> Any:
    """DynamoDB items -> JSON-ready data: Decimal with no fractional digits -> int, else float.

    For responses and OUT/*.json only (display); never feed the result back into DynamoDB."""
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:
            return int(value)
        return float(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(plain(v) for v in value)
    return value


def days_between(start: dt.date, end: dt.date, max_days: int = MAX_RANGE_DAYS) -> list[str]:
    """ISO dates from `start` to `end` inclusive; refuses reversed ranges and ranges over `max_days` days."""
    if start > end:
        raise ValueError(f"from {start.isoformat()} is after to {end.isoformat()}")
    n = (end - start).days + 1
    if n > max_days:
        raise RangeTooLongError(f"range of {n} days is longer than {max_days} days")
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(n)]


def _paginate(call: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Items of every page of a Query/Scan (LastEvaluatedKey loop)."""
    while True:
        response = call(**kwargs)
        yield from response.get("Items", [])
        last = response.get("LastEvaluatedKey")
        if not last:
            return
        kwargs["ExclusiveStartKey"] = last


class KpiTableStore:
    """One KPI table: its key fields, the date field that replacement works by, and how to find a date's items.

    `key_fields` is (partition,) or (partition, sort). A date's current items are found by a Query on the
    partition key when the date *is* the partition key, else through `date_index` (a GSI whose partition
    key is the date). GSIs are eventually consistent: an item written less than about a second before a
    replacement of the same date may be missed and left behind. Batches are serialised by the pipeline's
    lease and separated by the settle wait, far beyond GSI propagation lag, so this is accepted here."""

    def __init__(
        self,
        table: Any,
        key_fields: Sequence[str],
        *,
        date_field: str = "order_date",
        date_index: str | None = None,
        page_size: int | None = None,
    ) -> None:
        if not 1 <= len(key_fields) <= 2:
            raise ValueError("a DynamoDB key has one or two fields")
        if date_field not in key_fields:
            raise ValueError(f"the date field {date_field!r} must be a key field of {list(key_fields)}")
        if key_fields[0] != date_field and date_index is None:
            raise ValueError(f"{date_field!r} is not the partition key, so a GSI on it (date_index) is required")
        self.table = table
        self.key_fields = tuple(key_fields)
        self.date_field = date_field
        self.date_index = date_index
        # Query page size (None: DynamoDB's 1 MB pages). Smaller pages bound the read capacity one request
        # consumes; tests use it to exercise the pagination loop.
        self._page = {"Limit": page_size} if page_size else {}

    @property
    def name(self) -> str:
        return str(self.table.name)

    def key_of(self, item: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(item[f] for f in self.key_fields)

    # writes ---------------------------------------------------------------------------------------
    def keys_of_date(self, date: str) -> set[tuple[Any, ...]]:
        projection = {
            "ProjectionExpression": ", ".join(f"#k{i}" for i in range(len(self.key_fields))),
            "ExpressionAttributeNames": {f"#k{i}": f for i, f in enumerate(self.key_fields)},
        }
        if self.key_fields[0] == self.date_field:
            items = _paginate(
                self.table.query,
                KeyConditionExpression=Key(self.date_field).eq(date),
                ConsistentRead=True,
                **projection,
                **self._page,
            )
        else:
            items = _paginate(
                self.table.query,
                IndexName=self.date_index,
                KeyConditionExpression=Key(self.date_field).eq(date),
                **projection,
                **self._page,
            )
        return {self.key_of(item) for item in items}

    def replace_dates(self, items_by_date: Mapping[str, Sequence[Mapping[str, Any]]]) -> ReplaceStats:
        """Make each given date hold exactly the given items (an empty list empties the date)."""
        new_items: dict[tuple[Any, ...], Mapping[str, Any]] = {}
        for date, items in items_by_date.items():
            for i, item in enumerate(items):
                path = f"{self.name}[{date}][{i}]"
                missing = [f for f in self.key_fields if item.get(f) in (None, "")]
                if missing:
                    raise ValueError(f"{path}: key fields {missing} are missing")
                if item[self.date_field] != date:
                    raise ValueError(f"{path}: {self.date_field}={item[self.date_field]!r} filed under {date!r}")
                check_numbers(item, path)
                new_items[self.key_of(item)] = item  # a repeated key: the last one wins, as a put would
        old_keys: set[tuple[Any, ...]] = set()
        for date in items_by_date:
            old_keys |= self.keys_of_date(date)
        stale = sorted(old_keys - new_items.keys(), key=lambda k: tuple(map(str, k)))
        # batch_writer sends BatchWriteItem requests of at most 25 items and resends UnprocessedItems;
        # overwrite_by_pkeys drops an earlier buffered request for the same key instead of failing the batch.
        with self.table.batch_writer(overwrite_by_pkeys=list(self.key_fields)) as writer:
            for item in new_items.values():
                writer.put_item(Item=dict(item))
            for key in stale:
                writer.delete_item(Key=dict(zip(self.key_fields, key, strict=True)))
        return ReplaceStats(put=len(new_items), deleted=len(stale))

    # reads ----------------------------------------------------------------------------------------
    def get(self, **key: Any) -> dict[str, Any] | None:
        item = self.table.get_item(Key=key).get("Item")
        return dict(item) if item is not None else None

    def partition(self, value: str, *, sort_from: str | None = None, sort_to: str | None = None) -> list[dict[str, Any]]:
        """Items of one partition, optionally bounded on the sort key (inclusive), in sort-key order."""
        condition = Key(self.key_fields[0]).eq(value)
        if len(self.key_fields) == 2:
            sort = Key(self.key_fields[1])
            if sort_from is not None and sort_to is not None:
                condition = condition & sort.between(sort_from, sort_to)
            elif sort_from is not None:
                condition = condition & sort.gte(sort_from)
            elif sort_to is not None:
                condition = condition & sort.lte(sort_to)
        return list(_paginate(self.table.query, KeyConditionExpression=condition, **self._page))

    def partition_exists(self, value: str) -> bool:
        response = self.table.query(KeyConditionExpression=Key(self.key_fields[0]).eq(value), Limit=1)
        return bool(response.get("Items"))

    def of_date(self, date: str) -> list[dict[str, Any]]:
        """Every item of one date (through the GSI when the date is not the partition key)."""
        if self.key_fields[0] == self.date_field:
            return self.partition(date)
        return list(
            _paginate(
                self.table.query,
                IndexName=self.date_index,
                KeyConditionExpression=Key(self.date_field).eq(date),
                **self._page,
            )
        )


class KpiStore:
    """The two KPI tables of the default pipeline, addressed by their logical names (`OrderKPI`,
    `CategoryKPI`), whatever the deployed table names are. Handed a boto3 DynamoDB *resource* so tests
    pass a moto-backed one."""

    ORDER = "OrderKPI"
    CATEGORY = "CategoryKPI"
    CATEGORY_DATE_INDEX = "order_date-index"

    def __init__(
        self,
        dynamodb: Any,
        order_table: str = ORDER,
        category_table: str = CATEGORY,
        *,
        page_size: int | None = None,
    ) -> None:
        self.dynamodb = dynamodb
        self.orders = KpiTableStore(dynamodb.Table(order_table), ("order_date",), page_size=page_size)
        self.categories = KpiTableStore(
            dynamodb.Table(category_table),
            ("category", "order_date"),
            date_index=self.CATEGORY_DATE_INDEX,
            page_size=page_size,
        )
        self.tables: dict[str, KpiTableStore] = {self.ORDER: self.orders, self.CATEGORY: self.categories}

    def table(self, table_name: str) -> KpiTableStore:
        """By logical name (as in pipeline.yaml `kpis`) or by deployed name."""
        if table_name in self.tables:
            return self.tables[table_name]
        for store in self.tables.values():
            if store.name == table_name:
                return store
        raise KeyError(f"unknown KPI table {table_name!r}; known: {sorted(self.tables)}")

    def replace_dates(self, table_name: str, items_by_date: Mapping[str, Sequence[Mapping[str, Any]]]) -> ReplaceStats:
        return self.table(table_name).replace_dates(items_by_date)

    # API reads --------------------------------------------------------------------------------------
    def order_kpi(self, date: str) -> dict[str, Any] | None:
        return self.orders.get(order_date=date)

    def orders_between(self, start: dt.date, end: dt.date) -> list[dict[str, Any]]:
        """OrderKPI has only a partition key, so a range is point reads: BatchGetItem, 100 keys a request.
        Capped at MAX_RANGE_DAYS so one request does a bounded amount of work."""
        dates = days_between(start, end)
        found: list[dict[str, Any]] = []
        name = self.orders.name
        for i in range(0, len(dates), _BATCH_GET_LIMIT):
            request: dict[str, Any] = {name: {"Keys": [{"order_date": d} for d in dates[i : i + _BATCH_GET_LIMIT]]}}
            for attempt in range(_BATCH_GET_ATTEMPTS):
                response = self.dynamodb.batch_get_item(RequestItems=request)
                found.extend(response.get("Responses", {}).get(name, []))
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(1.0, 0.05 * 2**attempt))  # throttled: back off before asking for the rest
            if request:
                raise RuntimeError(f"BatchGetItem on {name} left keys unprocessed after {_BATCH_GET_ATTEMPTS} tries")
        return sorted((dict(item) for item in found), key=lambda item: item["order_date"])

    def category_between(self, category: str, start: str | None = None, end: str | None = None) -> list[dict[str, Any]]:
        return self.categories.partition(category, sort_from=start, sort_to=end)

    def category_exists(self, category: str) -> bool:
        return self.categories.partition_exists(category)

    def categories_of_date(self, date: str) -> list[dict[str, Any]]:
        return sorted(self.categories.of_date(date), key=lambda item: item["category"])


def dump_table(
    table: Any, key_fields: Iterable[str] | None = None, *, page_size: int | None = None
) -> list[dict[str, Any]]:
    """Every item of a table (paginated Scan), sorted by its key, for OUT/*.json. Numbers stay Decimal:
    pass the result through `plain` to write JSON."""
    fields = list(key_fields) if key_fields is not None else [k["AttributeName"] for k in table.key_schema]
    items = [dict(item) for item in _paginate(table.scan, **({"Limit": page_size} if page_size else {}))]
    return sorted(items, key=lambda item: tuple(_sort_value(item.get(f)) for f in fields))


def _sort_value(value: Any) -> tuple[int, Any]:
    # Key attributes are S, N or B; keep the types apart so mixed keys still sort deterministically.
    if isinstance(value, Decimal | int):
        return (0, value)
    return (1, str(value))
