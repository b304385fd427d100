"""DynamoDB adapter for the KPI tables: replace a period's items (writer side), look them up (API side).

Why "replace periods" rather than "put items": a period's KPIs (a day, a week, a month: `cfg.period_of`)
are recomputed whole from every valid row received so far, so the new set of items of a touched period is
complete. A category that no longer has items in that period (its items moved to another date, or were
replaced) must disappear; putting the new items alone would leave it behind. So: read the keys the period
has now, put the new items, delete the keys not in the new set. Puts go before deletes (one batch
writer, in order), so a reader never sees a period emptier than either the old or the new state. A table
spanning every date (no period) comes as the one period `"*"`: the whole table is replaced.

Why numbers are checked: DynamoDB numbers are exact decimals; a float reaching it would either be refused
by boto3 or (after a str() round trip) store binary noise such as 49.500000000000001. Every number must
be `Decimal` or `int`; anything else is refused before the first write, so a bad item never half-applies.

Table shapes (keys, types, indexes) come from `chalicelib.kpi_tables`, the one place that derives them
from pipeline.yaml; the template, the emulator and the API use the same shapes.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import Attr, Key

from chalicelib.kpi_tables import SORT_KEY, SORT_SEPARATOR, WHOLE_TABLE, TableShape, key_text, table_shapes

__all__ = [
    "MAX_RANGE_DAYS",
    "KpiStore",
    "KpiTableStore",
    "Page",
    "QueryError",
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


_MAX_CHAR = "\U0010ffff"  # sorts after every character in DynamoDB's byte order (UTF-8)


class RangeTooLongError(ValueError):
    """A date range longer than MAX_RANGE_DAYS days (inclusive)."""


class QueryError(ValueError):
    """A read the table's keys cannot answer as asked; the message says what is allowed."""


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


@dataclass(frozen=True)
class Page:
    """One page of a read: the items (without `_sk`), DynamoDB's LastEvaluatedKey (None: the last page),
    the index read (None: the table) and the operation (`query` or `scan`)."""

    items: list[dict[str, Any]]
    last_key: dict[str, Any] | None
    index: str | None
    operation: str


@dataclass(frozen=True)
class _Plan:
    index: str | None
    key_condition: Any | None  # None: a Scan
    filter: Any | None
    key_attributes: tuple[str, ...]  # the attributes of a LastEvaluatedKey of this read


def _legacy_shape(name: str, key_fields: Sequence[str], date_field: str, date_index: str | None) -> TableShape:
    """The shape the older constructor (`KpiTableStore(table, key_fields, date_field=, date_index=)`) meant:
    string keys, replaced a day at a time by `date_field`, found through `date_index` when that is not the
    hash key."""
    if not 1 <= len(key_fields) <= 2:
        raise ValueError("a DynamoDB key has one or two fields")
    if date_field not in key_fields:
        raise ValueError(f"the date field {date_field!r} must be a key field of {list(key_fields)}")
    if key_fields[0] != date_field and date_index is None:
        raise ValueError(f"{date_field!r} is not the partition key, so a GSI on it (date_index) is required")
    index = (date_index, date_field) if date_index is not None else None
    return TableShape.of_key(name, key_fields, period=(date_field, "day"), index=index)


class KpiTableStore:
    """One KPI table: its shape (`chalicelib.kpi_tables.TableShape`), how to replace a period's items and
    how to read them.

    A period's current items are found by a Query on the hash key when the period field *is* the hash
    key, else through the table's period GSI; a table without a period is scanned. GSIs are eventually
    consistent: an item written less than about a second before a replacement of the same period may be
    missed and left behind. Batches are serialised by the pipeline's lease and separated by the settle
    wait, far beyond GSI propagation lag, so this is accepted here.

    `KpiTableStore(table, ("category", "order_date"), date_index="order_date-index")` (key fields instead of
    a shape) is the older form: string keys replaced a day at a time by `date_field`."""

    def __init__(
        self,
        table: Any,
        shape: TableShape | Sequence[str],
        *,
        date_field: str = "order_date",
        date_index: str | None = None,
        page_size: int | None = None,
    ) -> None:
        if not isinstance(shape, TableShape):
            shape = _legacy_shape(str(table.name), tuple(shape), date_field, date_index)
        self.table = table
        self.shape = shape
        # Query page size (None: DynamoDB's 1 MB pages). Smaller pages bound the read capacity one request
        # consumes; tests use it to exercise the pagination loop.
        self._page = {"Limit": page_size} if page_size else {}

    @property
    def name(self) -> str:
        """The deployed table name."""
        return str(self.table.name)

    @property
    def key_fields(self) -> tuple[str, ...]:
        return self.shape.key

    @property
    def date_field(self) -> str | None:
        return self.shape.period_field

    def key_of(self, item: Mapping[str, Any]) -> tuple[Any, ...]:
        """The item's primary key values (`_sk` included for a 3-field key)."""
        return tuple(self.shape.key_of(item).values())

    # writes ---------------------------------------------------------------------------------------
    def period_keys(self, period: str) -> set[tuple[Any, ...]]:
        """The primary keys the table holds now for one period (`"*"`: every key of the table)."""
        attributes = self.shape.key_attributes()
        projection = {
            "ProjectionExpression": ", ".join(f"#k{i}" for i in range(len(attributes))),
            "ExpressionAttributeNames": {f"#k{i}": a for i, a in enumerate(attributes)},
        }
        field = self.shape.period_field
        if period == WHOLE_TABLE or field is None:
            items = _paginate(self.table.scan, ConsistentRead=True, **projection, **self._page)
        elif field == self.shape.hash_key:
            items = _paginate(
                self.table.query,
                KeyConditionExpression=Key(field).eq(period),
                ConsistentRead=True,
                **projection,
                **self._page,
            )
        else:
            index = self.shape.period_index
            assert index is not None  # TableShape.of_key always gives a period field off the hash key a GSI
            items = _paginate(
                self.table.query,
                IndexName=index.name,
                KeyConditionExpression=Key(field).eq(period),
                **projection,
                **self._page,
            )
        return {tuple(item[a] for a in attributes) for item in items}

    keys_of_date = period_keys

    def replace_periods(self, items_by_period: Mapping[str, Sequence[Mapping[str, Any]]]) -> ReplaceStats:
        """Make each given period hold exactly the given items (an empty list empties the period).

        `items_by_period`: period value (`YYYY-MM-DD`, a week's Monday, `YYYY-MM`) -> the complete items of
        that period; for a table without a period exactly `{"*": every item}`. Every item is checked
        (key fields present, filed under its own period, no float anywhere) before the first write."""
        field = self.shape.period_field
        new_items: dict[tuple[Any, ...], dict[str, Any]] = {}
        for period, items in items_by_period.items():
            if field is None and period != WHOLE_TABLE:
                raise ValueError(f"{self.name}: the table spans every date, so its items come as {{'*': [...]}}, not under {period!r}")
            if field is not None and period == WHOLE_TABLE:
                raise ValueError(f"{self.name}: the table is replaced a {field} at a time; '*' is for tables without a period")
            for i, item in enumerate(items):
                path = f"{self.name}[{period}][{i}]"
                missing = [f for f in self.shape.key if item.get(f) is None or item.get(f) == ""]
                if missing:
                    raise ValueError(f"{path}: key fields {missing} are missing")
                if field is not None and key_text(item[field]) != period:
                    raise ValueError(f"{path}: {field}={item[field]!r} filed under {period!r}")
                check_numbers(item, path)
                stored = self.shape.stored(item)
                new_items[self.key_of(stored)] = stored  # a repeated key: the last one wins, as a put would
        old_keys: set[tuple[Any, ...]] = set()
        for period in items_by_period:
            old_keys |= self.period_keys(period)
        stale = sorted(old_keys - new_items.keys(), key=lambda k: tuple(map(str, k)))
        attributes = list(self.shape.key_attributes())
        # batch_writer sends BatchWriteItem requests of at most 25 items and resends UnprocessedItems;
        # overwrite_by_pkeys drops an earlier buffered request for the same key instead of failing the batch.
        with self.table.batch_writer(overwrite_by_pkeys=attributes) as writer:
            for item in new_items.values():
                writer.put_item(Item=item)
            for key in stale:
                writer.delete_item(Key=dict(zip(attributes, key, strict=True)))
        return ReplaceStats(put=len(new_items), deleted=len(stale))

    replace_dates = replace_periods  # the older name

    def put_items(self, items: Iterable[Mapping[str, Any]]) -> int:
        """Put items as they are (no period replacement), `_sk` added: loading a saved table back."""
        count = 0
        with self.table.batch_writer(overwrite_by_pkeys=list(self.shape.key_attributes())) as writer:
            for item in items:
                check_numbers(item, f"{self.name}[{count}]")
                writer.put_item(Item=self.shape.stored(item))
                count += 1
        return count

    # reads ----------------------------------------------------------------------------------------
    def get(self, **key: Any) -> dict[str, Any] | None:
        """One item by its key fields (all of them)."""
        item = self.table.get_item(Key=self.shape.key_of(key)).get("Item")
        return self.shape.public(item) if item is not None else None

    def dump(self) -> list[dict[str, Any]]:
        """Every item (paginated Scan), sorted by the key fields, without `_sk`; numbers stay Decimal."""
        items = [self.shape.public(item) for item in _paginate(self.table.scan, **self._page)]
        return sorted(items, key=lambda item: tuple(_sort_value(item.get(f)) for f in self.shape.key))

    def partition(self, value: Any, *, sort_from: Any = None, sort_to: Any = None) -> list[dict[str, Any]]:
        """Items of one hash key, optionally bounded on key[1] (inclusive), in range-key order."""
        plan = self._plan({self.shape.hash_key: value}, None, sort_from, sort_to)
        return [self.shape.public(i) for i in _paginate(self.table.query, **self._read_args(plan))]

    def partition_exists(self, value: Any) -> bool:
        response = self.table.query(KeyConditionExpression=Key(self.shape.hash_key).eq(value), Limit=1)
        return bool(response.get("Items"))

    def of_period(self, value: str) -> list[dict[str, Any]]:
        """Every item of one period (through the period GSI when the period is not the hash key)."""
        field = self.shape.period_field
        if field is None:
            raise QueryError(f"{self.shape.name} has no period field")
        plan = self._plan({field: value}, None, None, None)
        return [self.shape.public(i) for i in _paginate(self.table.query, **self._read_args(plan))]

    of_date = of_period

    def select(
        self,
        equals: Mapping[str, Any] | None = None,
        *,
        index: str | None = None,
        lower: Any = None,
        upper: Any = None,
        limit: int | None = None,
        start_key: Mapping[str, Any] | None = None,
    ) -> Page:
        """One page of the items whose key fields equal `equals`, bounded (inclusive) by `lower`/`upper` on
        the range key of the key condition used, `limit` items at most, after `start_key` (a previous
        page's `last_key`).

        The key condition: the index named by `index`; else the table when its hash key is given; else the
        first GSI whose hash key is given (the period index first); else a Scan (no bound allowed).
        Equalities the key condition does not use filter the page (so a page may hold fewer than `limit`
        items while more follow). Values must have the key's type (Decimal for N keys). Raises QueryError."""
        plan = self._plan(dict(equals or {}), index, lower, upper)
        args = self._read_args(plan)
        if limit is not None:
            args["Limit"] = limit
        if start_key:
            if set(start_key) != set(plan.key_attributes):
                raise QueryError(
                    f"the start key names {sorted(start_key)}, but this read continues from {list(plan.key_attributes)}; "
                    "allowed: the `next` of the same query"
                )
            args["ExclusiveStartKey"] = dict(start_key)
        response = (self.table.query if plan.key_condition is not None else self.table.scan)(**args)
        items = [self.shape.public(i) for i in response.get("Items", [])]
        return Page(items, response.get("LastEvaluatedKey") or None, plan.index, "query" if plan.key_condition is not None else "scan")

    def _read_args(self, plan: _Plan) -> dict[str, Any]:
        args: dict[str, Any] = dict(self._page)
        if plan.index is not None:
            args["IndexName"] = plan.index
        if plan.key_condition is not None:
            args["KeyConditionExpression"] = plan.key_condition
        if plan.filter is not None:
            args["FilterExpression"] = plan.filter
        return args

    def _typed(self, name: str, value: Any) -> Any:
        """A key value (or bound) of the type its attribute has: text from a URL becomes a Decimal for an N key."""
        if value is None or self.shape.field_type(name) != "N" or isinstance(value, Decimal | int):
            return value
        try:
            number = Decimal(str(value))
        except ArithmeticError:
            number = None
        if number is None or not number.is_finite():
            raise QueryError(f"{name}={value!r} is not a number; allowed: a number, {name} is numeric in {self.shape.name}")
        return number

    def _plan(self, equals: dict[str, Any], index: str | None, lower: Any, upper: Any) -> _Plan:
        shape = self.shape
        unknown = [f for f in equals if f not in shape.key]
        if unknown:
            raise QueryError(f"{unknown} are not key fields of {shape.name}; allowed: {list(shape.key)}")
        equals = {k: self._typed(k, v) for k, v in equals.items()}
        bounded = lower is not None or upper is not None
        table_keys = shape.key_attributes()
        if index is not None:
            try:
                gsi = shape.index(index)
            except KeyError as exc:
                raise QueryError(str(exc.args[0])) from exc
            if gsi.hash_key not in equals:
                raise QueryError(f"index {gsi.name} is read by its hash key: give {gsi.hash_key}=")
            condition, used = self._range_condition(gsi.hash_key, gsi.range_key, equals, lower, upper)
            keys = tuple(dict.fromkeys((*table_keys, *gsi.key_attributes())))
            return _Plan(gsi.name, condition, self._filter(equals, used), keys)
        if shape.hash_key in equals:
            if shape.synthetic_range:
                condition, used = self._sort_key_condition(equals, lower, upper)
            else:
                condition, used = self._range_condition(shape.hash_key, shape.range_key, equals, lower, upper)
            return _Plan(None, condition, self._filter(equals, used), table_keys)
        candidates = [shape.period_index] if shape.period_index is not None else []
        candidates += [i for i in shape.indexes if i not in candidates]
        for gsi in candidates:
            if gsi is not None and gsi.hash_key in equals:
                condition, used = self._range_condition(gsi.hash_key, gsi.range_key, equals, lower, upper)
                keys = tuple(dict.fromkeys((*table_keys, *gsi.key_attributes())))
                return _Plan(gsi.name, condition, self._filter(equals, used), keys)
        if bounded:
            hashes = [shape.hash_key, *(i.hash_key for i in shape.indexes if i.hash_key != shape.hash_key)]
            raise QueryError(
                f"from/to bound a range key, which needs a key condition; allowed: from/to with one of {hashes}="
            )
        return _Plan(None, None, self._filter(equals, set()), table_keys)

    def _range_condition(
        self, hash_key: str, range_key: str | None, equals: Mapping[str, Any], lower: Any, upper: Any
    ) -> tuple[Any, set[str]]:
        condition = Key(hash_key).eq(equals[hash_key])
        used = {hash_key}
        if range_key is not None and range_key in equals:
            if lower is not None or upper is not None:
                raise QueryError(f"{range_key}= and from/to both bound {range_key}; allowed: one of them")
            return condition & Key(range_key).eq(equals[range_key]), used | {range_key}
        if lower is None and upper is None:
            return condition, used
        if range_key is None:
            raise QueryError(f"{self.shape.name} has no range key to bound with from/to (its key is {hash_key} alone)")
        lower, upper = self._typed(range_key, lower), self._typed(range_key, upper)
        rng = Key(range_key)
        if lower is not None and upper is not None:
            _check_order(lower, upper)
            return condition & rng.between(lower, upper), used
        return condition & (rng.gte(lower) if lower is not None else rng.lte(upper)), used

    def _sort_key_condition(self, equals: Mapping[str, Any], lower: Any, upper: Any) -> tuple[Any, set[str]]:
        """A 3-field key [a, b, c]: hash a, range `_sk` = "b#c". b and c given: `_sk` equals; b given: the
        items of that b (bounds on c); neither: bounds on b. Bounds need a string field (`_sk` is text)."""
        shape = self.shape
        a, b, c = shape.key
        condition = Key(a).eq(equals[a])
        sk = Key(SORT_KEY)
        if b in equals and c in equals:
            if lower is not None or upper is not None:
                raise QueryError(f"{b}= and {c}= give the whole key; allowed: from/to with at most one of them")
            return condition & sk.eq(shape.sort_value(equals[b], equals[c])), {a, b, c}
        bounded_field = c if b in equals else b
        if (lower is not None or upper is not None) and shape.field_type(bounded_field) != "S":
            raise QueryError(f"from/to on {bounded_field} (a number inside the text key {SORT_KEY}) are not supported; "
                             f"allowed: {bounded_field}= equality")
        if lower is not None and upper is not None:
            _check_order(lower, upper)
        if b in equals:
            prefix = key_text(equals[b]) + SORT_SEPARATOR
            if lower is None and upper is None:
                return condition & sk.begins_with(prefix), {a, b}
            low = prefix + key_text(lower) if lower is not None else prefix
            high = prefix + key_text(upper) if upper is not None else prefix + _MAX_CHAR
            return condition & sk.between(low, high), {a, b}
        if lower is None and upper is None:
            return condition, {a}
        # b's bounds over "b#c": every "b#..." of a b >= lower is >= "lower#", of a b <= upper is <= "upper#<max>"
        low = key_text(lower) + SORT_SEPARATOR if lower is not None else None
        high = key_text(upper) + SORT_SEPARATOR + _MAX_CHAR if upper is not None else None
        if low is not None and high is not None:
            return condition & sk.between(low, high), {a}
        return condition & (sk.gte(low) if low is not None else sk.lte(high)), {a}

    @staticmethod
    def _filter(equals: Mapping[str, Any], used: set[str]) -> Any | None:
        condition = None
        for name, value in equals.items():
            if name not in used:
                term = Attr(name).eq(value)
                condition = term if condition is None else condition & term
        return condition


def _check_order(lower: Any, upper: Any) -> None:
    if lower > upper:
        raise QueryError(f"from={lower} is after to={upper}; allowed: from <= to")


class KpiStore:
    """Every KPI table of a pipeline.yaml, addressed by its logical name (as under `kpis:`), whatever the
    deployed table names are (`names`: logical -> deployed, e.g. from `kpi_tables.table_names_from_env`;
    a table it does not name is deployed under its logical name). Handed a boto3 DynamoDB *resource* so
    tests pass a moto-backed one."""

    ORDER = "OrderKPI"
    CATEGORY = "CategoryKPI"
    CATEGORY_DATE_INDEX = "order_date-index"

    def __init__(
        self,
        dynamodb: Any,
        cfg: Any,
        names: Mapping[str, str] | None = None,
        *,
        page_size: int | None = None,
    ) -> None:
        self.dynamodb = dynamodb
        names = dict(names or {})
        self.tables: dict[str, KpiTableStore] = {
            logical: KpiTableStore(dynamodb.Table(names.get(logical, logical)), shape, page_size=page_size)
            for logical, shape in table_shapes(cfg).items()
        }

    @property
    def names(self) -> dict[str, str]:
        """Logical name -> deployed name, for every table."""
        return {logical: store.name for logical, store in self.tables.items()}

    def table(self, table_name: str) -> KpiTableStore:
        """By logical name (as in pipeline.yaml `kpis`) or by deployed name."""
        if table_name in self.tables:
            return self.tables[table_name]
        for store in self.tables.values():
            if store.name == table_name:
                return store
        raise KeyError(f"unknown KPI table {table_name!r}; known: {sorted(self.tables)}")

    def replace_periods(self, table_name: str, items_by_period: Mapping[str, Sequence[Mapping[str, Any]]]) -> ReplaceStats:
        """`KpiTableStore.replace_periods` of one table, by logical name."""
        return self.table(table_name).replace_periods(items_by_period)

    replace_dates = replace_periods  # the older name

    # the default tables' reads (the /kpis/orders..., /kpis/categories/..., /kpis/dates/... routes) -----
    @property
    def orders(self) -> KpiTableStore:
        return self.table(self.ORDER)

    @property
    def categories(self) -> KpiTableStore:
        return self.table(self.CATEGORY)

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
        return sorted(self.categories.of_period(date), key=lambda item: item["category"])


def dump_table(
    table: Any, key_fields: Iterable[str] | None = None, *, page_size: int | None = None
) -> list[dict[str, Any]]:
    """Every item of a table (paginated Scan), sorted by its key, without `_sk`, for OUT/*.json. Numbers stay
    Decimal: pass the result through `plain` to write JSON."""
    fields = list(key_fields) if key_fields is not None else [k["AttributeName"] for k in table.key_schema]
    items = [
        {k: v for k, v in item.items() if k != SORT_KEY}
        for item in _paginate(table.scan, **({"Limit": page_size} if page_size else {}))
    ]
    return sorted(items, key=lambda item: tuple(_sort_value(item.get(f)) for f in fields))


def _sort_value(value: Any) -> tuple[int, Any]:
    # Key attributes are S, N or B; keep the types apart so mixed keys still sort deterministically.
    if isinstance(value, Decimal | int):
        return (0, value)
    return (1, str(value))
