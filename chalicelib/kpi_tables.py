"""The DynamoDB shape of every KPI table of a pipeline.yaml: pure, and the one source the template rendering
(kpipe/infra.py), the emulator, the store (kpi_store.py) and the read API derive their tables from.

For a table declared under `kpis:` with key fields `key` (1 to 3, in declared order):
- the hash key is key[0]; the range key is key[1] for a 2-field key, and for a 3-field key the synthetic
  attribute `_sk` = "<key[1]>#<key[2]>" (the two values joined), which the store writes on every item and
  the API never returns;
- a key attribute is a number (N) when its field is an int or decimal in the datasets the table reads,
  else a string (S); `_sk` is always S;
- the GSIs: the declared `index` (hash on its key), plus, when the table is replaced a period at a time
  (`cfg.period_of`) by a field that is not key[0] and no declared index has that field as hash, an
  automatic `<field>-index` on it, so that a period's current items can be found to replace them. A GSI's
  range key is the first other key field (for the default CategoryKPI's `order_date-index`: `category`);
  projection ALL.

Why the period GSI: replacing a period means deleting the items it no longer has; without an index on the
period field those could only be found by scanning the whole table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = [
    "ENV_KPI_TABLES",
    "LEGACY_ENV",
    "SORT_KEY",
    "SORT_SEPARATOR",
    "WHOLE_TABLE",
    "IndexShape",
    "TableShape",
    "key_text",
    "table_names_from_env",
    "table_shape",
    "table_shapes",
]

SORT_KEY = "_sk"
SORT_SEPARATOR = "#"
WHOLE_TABLE = "*"  # the one period of a table that spans every date (cfg.period_of is None)
ENV_KPI_TABLES = "KPIPE_KPI_TABLES"  # JSON {logical name: deployed name}
LEGACY_ENV = {"OrderKPI": "KPIPE_ORDER_TABLE", "CategoryKPI": "KPIPE_CATEGORY_TABLE"}  # read when not in the JSON
_NUMERIC = ("int", "decimal")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass(frozen=True)
class IndexShape:
    """A global secondary index: hash (and range) attribute with their DynamoDB types."""

    name: str
    hash_key: str
    hash_type: str
    range_key: str | None = None
    range_type: str | None = None
    declared: bool = True  # False: the automatic period index

    def key_attributes(self) -> tuple[str, ...]:
        return (self.hash_key,) if self.range_key is None else (self.hash_key, self.range_key)

    def key_schema(self) -> list[dict[str, str]]:
        schema = [{"AttributeName": self.hash_key, "KeyType": "HASH"}]
        if self.range_key is not None:
            schema.append({"AttributeName": self.range_key, "KeyType": "RANGE"})
        return schema

    def definition(self) -> dict[str, Any]:
        """As CloudFormation's and DynamoDB's CreateTable `GlobalSecondaryIndexes` entries."""
        return {"IndexName": self.name, "KeySchema": self.key_schema(), "Projection": {"ProjectionType": "ALL"}}


@dataclass(frozen=True)
class TableShape:
    """One KPI table as DynamoDB holds it (see the module doc)."""

    name: str
    key: tuple[str, ...]
    types: tuple[tuple[str, str], ...]  # (key field, S|N) in key order
    period: tuple[str, str] | None = None  # (field, grain): replaced a period at a time; None: the whole table
    indexes: tuple[IndexShape, ...] = ()
    metrics: tuple[str, ...] = ()  # the stored metrics, in declaration order

    def __post_init__(self) -> None:
        if not 1 <= len(self.key) <= 3:
            raise ValueError(f"{self.name}: a KPI table key has 1 to 3 fields, not {list(self.key)}")

    # keys ---------------------------------------------------------------------------------------
    @property
    def hash_key(self) -> str:
        return self.key[0]

    @property
    def range_key(self) -> str | None:
        """key[1], `_sk` for a 3-field key, None for a 1-field key."""
        return None if len(self.key) == 1 else (self.key[1] if len(self.key) == 2 else SORT_KEY)

    @property
    def synthetic_range(self) -> bool:
        return len(self.key) == 3

    def key_attributes(self) -> tuple[str, ...]:
        """The attributes of the table's primary key (`_sk` for a 3-field key)."""
        return (self.hash_key,) if self.range_key is None else (self.hash_key, self.range_key)

    def attribute_type(self, attribute: str) -> str:
        return "S" if attribute == SORT_KEY else dict(self.types).get(attribute, "S")

    def field_type(self, name: str) -> str:
        """S or N of a key field."""
        return dict(self.types).get(name, "S")

    def key_schema(self) -> list[dict[str, str]]:
        schema = [{"AttributeName": self.hash_key, "KeyType": "HASH"}]
        if self.range_key is not None:
            schema.append({"AttributeName": self.range_key, "KeyType": "RANGE"})
        return schema

    def attribute_definitions(self) -> list[dict[str, str]]:
        """Every attribute a key of the table or of one of its indexes uses, once, in first-use order."""
        names = list(self.key_attributes())
        for index in self.indexes:
            names.extend(a for a in index.key_attributes() if a not in names)
        return [{"AttributeName": n, "AttributeType": self.attribute_type(n)} for n in names]

    def index_definitions(self) -> list[dict[str, Any]]:
        return [index.definition() for index in self.indexes]

    def key_signature(self) -> tuple[tuple[str, str, str], ...]:
        """(attribute, HASH|RANGE, S|N) of the primary key: what a change of needs a new table."""
        return tuple(
            (k["AttributeName"], k["KeyType"], self.attribute_type(k["AttributeName"])) for k in self.key_schema()
        )

    # indexes ------------------------------------------------------------------------------------
    def index(self, name: str) -> IndexShape:
        for index in self.indexes:
            if index.name == name:
                return index
        raise KeyError(f"{self.name} has no index {name!r}; allowed: {[i.name for i in self.indexes] or 'none'}")

    @property
    def period_field(self) -> str | None:
        return self.period[0] if self.period else None

    @property
    def period_index(self) -> IndexShape | None:
        """The GSI a period's items are found through: None when the period field is the hash key (a Query
        on the table) or the table has no period (a Scan)."""
        if self.period is None or self.period[0] == self.hash_key:
            return None
        return next((i for i in self.indexes if i.hash_key == self.period[0]), None)

    # items --------------------------------------------------------------------------------------
    def stored(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """The item as written: key values typed as the table declares them, `_sk` added for a 3-field key."""
        out = dict(item)
        for name in self.key:
            value = out.get(name)
            if self.field_type(name) == "S" and value is not None and not isinstance(value, str):
                out[name] = key_text(value)
        if self.synthetic_range:
            out[SORT_KEY] = self.sort_value(out[self.key[1]], out[self.key[2]])
        return out

    def sort_value(self, first: Any, second: Any) -> str:
        return f"{key_text(first)}{SORT_SEPARATOR}{key_text(second)}"

    def key_of(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """The DynamoDB key of an item (a stored one, or one of the engine's: `_sk` is computed)."""
        stored = item if not self.synthetic_range or SORT_KEY in item else self.stored(item)
        return {a: stored[a] for a in self.key_attributes()}

    def public(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """An item as the API and OUT/*.json show it: without `_sk`."""
        return {k: v for k, v in item.items() if k != SORT_KEY}

    # construction ------------------------------------------------------------------------------
    @classmethod
    def of_key(
        cls,
        name: str,
        key: Sequence[str],
        *,
        period: tuple[str, str] | None = None,
        index: tuple[str, str] | None = None,
        types: Mapping[str, str] | None = None,
        metrics: Sequence[str] = (),
    ) -> TableShape:
        """A shape from its parts (`index`: (name, key field) as declared); types default to S."""
        key = tuple(key)
        if len(set(key)) != len(key):
            raise ValueError(f"{name}: the key {list(key)} names a field twice")
        typed = tuple((k, (types or {}).get(k, "S")) for k in key)
        kinds = dict(typed)
        indexes: list[IndexShape] = []

        def gsi(index_name: str, hash_field: str, declared: bool) -> IndexShape:
            if hash_field not in key:
                raise ValueError(f"{name}: index {index_name!r} is on {hash_field!r}, not a key field of {list(key)}")
            if not 3 <= len(index_name) <= 255 or set(index_name) - _NAME_CHARS:
                raise ValueError(
                    f"{name}: {index_name!r} is not a DynamoDB index name; allowed: 3 to 255 of a-z A-Z 0-9 _ . -"
                )
            other = next((k for k in key if k != hash_field), None)
            return IndexShape(
                index_name, hash_field, kinds[hash_field], other, kinds[other] if other else None, declared
            )

        if index is not None:
            indexes.append(gsi(index[0], index[1], True))
        if period is not None and period[0] != key[0] and not any(i.hash_key == period[0] for i in indexes):
            auto = f"{period[0]}-index"
            if any(i.name == auto for i in indexes):
                raise ValueError(f"{name}: the declared index {auto!r} is not on {period[0]!r}; rename it")
            indexes.append(gsi(auto, period[0], False))
        return cls(name, key, typed, period, tuple(indexes), tuple(metrics))


def key_text(value: Any) -> str:
    """A key value as text (for `_sk` and S keys): numbers in their shortest exact form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return str(int(value))
        return format(value.normalize(), "f")
    return str(value)


def table_shape(cfg: Any, name: str) -> TableShape:
    """The shape of `cfg.kpis[name]` (cfg: a chalicelib.config.PipelineConfig)."""
    table = cfg.kpis[name]
    sources = cfg.sources_of(name)
    types: dict[str, str] = {}
    for k in table.key:
        kind = "S"
        for source in sources:
            if k in cfg.datasets[source].fields():
                kind = "N" if cfg.field_type(source, k) in _NUMERIC else "S"
                break
        types[k] = kind
    index = (table.index.name, table.index.key) if table.index is not None else None
    metrics = [m for m, spec in table.metrics.items() if spec.store]
    return TableShape.of_key(name, table.key, period=cfg.period_of(name), index=index, types=types, metrics=metrics)


def table_shapes(cfg: Any) -> dict[str, TableShape]:
    """Every KPI table of the config, in declaration order."""
    return {name: table_shape(cfg, name) for name in cfg.kpis}


def table_names_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """Logical name -> deployed name: `KPIPE_KPI_TABLES` (JSON), then the older `KPIPE_ORDER_TABLE` /
    `KPIPE_CATEGORY_TABLE` for the two default tables it does not name. A table named nowhere is deployed
    under its logical name (callers use `.get(name, name)`)."""
    names: dict[str, str] = {}
    raw = env.get(ENV_KPI_TABLES)
    if raw:
        try:
            decoded = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{ENV_KPI_TABLES} is not JSON ({exc}); allowed: {{\"OrderKPI\": \"<table name>\", ...}}") from exc
        if not isinstance(decoded, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in decoded.items()):
            raise ValueError(f"{ENV_KPI_TABLES} must map logical table names to deployed names (strings)")
        names.update(decoded)
    for logical, variable in LEGACY_ENV.items():
        if logical not in names and env.get(variable):
            names[logical] = env[variable]
    return names
