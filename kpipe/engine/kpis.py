"""KPI items from live processed rows: pure aggregation, no I/O.

A `KpiPlan` is compiled once from `pipeline.yaml`: for every dataset that feeds a KPI it lists the
fields to read, and for every table the group key and the metrics. `DateAggregator` then takes the
live rows of one `order_date` and returns each table's complete set of items for that date.

>>> from decimal import Decimal
>>> finish_number(Decimal("49.505"), 2), finish_number(Decimal(1) / Decimal(3), 4), finish_number(3, None)
(Decimal('49.51'), Decimal('0.3333'), 3)
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from itertools import compress
from typing import Any

from chalicelib.config import Metric, PipelineConfig
from kpipe.engine.keys import IntColumn, take
from kpipe.engine.parsing import has_none, reader_for
from kpipe.engine.rules import check_predicate


def finish_number(value: Any, places: int | None) -> Any:
    """Round money/rates when stored (half-up: the rounding a finance reader expects)."""
    if places is None or value is None:
        return value
    return Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


@dataclass
class _Source:
    """One dataset's contribution to one table: where its key and metric inputs sit in a read row."""

    key_pos: list[int]
    metrics: list[tuple[int, str, int, list[tuple[int, Any]]]]  # (metric index, kind, field pos, conditions)


@dataclass
class TablePlan:
    name: str
    key: list[str]
    metric_names: list[str]
    metrics: list[Metric]
    sources: dict[str, _Source] = field(default_factory=dict)
    kinds: list[str] = field(init=False)  # each metric's kind, looked up once (a batch spanning years finishes ~50k groups)

    def __post_init__(self) -> None:
        self.kinds = [metric.kind for metric in self.metrics]


@dataclass
class KpiPlan:
    fields: dict[str, list[str]]  # dataset -> fields read from processed rows, in this order
    types: dict[str, list[str]]
    tables: list[TablePlan]

    @classmethod
    def compile(cls, cfg: PipelineConfig) -> KpiPlan:
        fields: dict[str, list[str]] = {}

        def pos(dataset: str, name: str) -> int:
            wanted = fields.setdefault(dataset, [])
            if name not in wanted:
                wanted.append(name)
            return wanted.index(name)

        tables = []
        for t_name, table in cfg.kpis.items():
            plan = TablePlan(t_name, list(table.key), list(table.metrics), list(table.metrics.values()))
            for i, metric in enumerate(plan.metrics):
                if metric.kind == "ratio":
                    continue
                src = metric.from_
                assert src is not None and metric.field is not None
                source = plan.sources.get(src)
                if source is None:
                    source = plan.sources[src] = _Source([pos(src, k) for k in table.key], [])
                conds = [(pos(src, c.field), check_predicate(c, cfg.field_type(src, c.field))) for c in metric.where]
                source.metrics.append((i, metric.kind, pos(src, metric.field), conds))
            tables.append(plan)
        types = {ds: [cfg.field_type(ds, f) for f in names] for ds, names in fields.items()}
        return cls(fields, types, tables)

    def readers(self, dataset: str) -> list[Any]:
        return [reader_for(t) for t in self.types[dataset]]


class DateAggregator:
    """Accumulates live rows, given as value columns in `KpiPlan.fields` order, and yields items.

    Work is column-wise: rows are bucketed by group key once, then each metric reduces its
    bucket with C-level `sum`/`set.update`/`min`/`max`."""

    def __init__(self, plan: KpiPlan) -> None:
        self.plan = plan
        self.groups: list[dict[tuple[Any, ...], list[Any]]] = [{} for _ in plan.tables]

    def add_rows(self, dataset: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.add(dataset, [list(col) for col in zip(*rows, strict=True)])

    def add(self, dataset: str, cols: list[list[Any]]) -> None:
        if not cols or not cols[0]:
            return
        # per value column, once per call rather than once per table and group: is it all ints (an
        # IntColumn: no null, and a count_distinct needs no per-value type check), may it hold a null
        ints = [type(col) is IntColumn for col in cols]
        nullable: dict[int, bool] = {}
        for t_index, table in enumerate(self.plan.tables):
            source = table.sources.get(dataset)
            if source is None:
                continue
            groups = self.groups[t_index]
            buckets = _buckets([cols[p] for p in source.key_pos])
            masks: dict[int, list[bool]] = {}
            for m_index, _kind, _fpos, conds in source.metrics:
                if conds and m_index not in masks:
                    masks[m_index] = _mask(cols, conds)
            for _m, _k, fpos, _c in source.metrics:
                if fpos not in nullable:
                    nullable[fpos] = not ints[fpos] and has_none(cols[fpos])
            for key, idxs in buckets.items():
                if None in key:
                    continue  # a row without its key fields cannot be placed in this table
                accs = groups.get(key)
                if accs is None:
                    accs = groups[key] = [None] * len(table.metrics)
                gathered: dict[int, list[Any]] = {}  # a field's values in this group, cut once
                for m_index, kind, fpos, conds in source.metrics:
                    col = cols[fpos]
                    if idxs is not None:
                        col = gathered.get(fpos)  # type: ignore[assignment]
                        if col is None:
                            col = gathered[fpos] = take(cols[fpos], idxs)
                    if conds:
                        mask = masks[m_index]
                        values = list(compress(col, mask if idxs is None else take(mask, idxs)))
                    else:
                        values = col
                    if nullable[fpos] and has_none(values):
                        values = [v for v in values if v is not None]
                    accs[m_index] = _reduce(kind, accs[m_index], values, ints[fpos])

    def items(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for t_index, table in enumerate(self.plan.tables):
            items = []
            for key in sorted(self.groups[t_index], key=lambda k: tuple(str(x) for x in k)):
                accs = self.groups[t_index][key]
                values: dict[str, Any] = {}
                for name, metric, kind, acc in zip(table.metric_names, table.metrics, table.kinds, accs, strict=True):
                    values[name] = _final(metric, kind, acc, values)
                item: dict[str, Any] = {k: str(v) for k, v in zip(table.key, key, strict=True)}
                for name, metric in zip(table.metric_names, table.metrics, strict=True):
                    if metric.store and values[name] is not None:
                        item[name] = finish_number(values[name], metric.round)
                items.append(item)
            out[table.name] = items
        return out


def _buckets(key_cols: list[list[Any]]) -> dict[tuple[Any, ...], list[int] | None]:
    """Row positions per group key; None stands for "every row" when the key is the same throughout
    (always so for a key of the partition date alone, which is what a recompute reads at a time)."""
    constant = [col.count(col[0]) == len(col) for col in key_cols]
    if all(constant):
        return {tuple(col[0] for col in key_cols): None}
    varying = [col for col, same in zip(key_cols, constant, strict=True) if not same]
    values = varying[0] if len(varying) == 1 else list(zip(*varying, strict=True))
    by_value: dict[Any, list[int]] = {}
    for i, value in enumerate(values):  # bucket by the varying part only (usually one column)
        bucket = by_value.get(value)
        if bucket is None:
            by_value[value] = [i]
        else:
            bucket.append(i)

    def full_key(value: Any) -> tuple[Any, ...]:
        parts = iter((value,) if len(varying) == 1 else value)
        return tuple(col[0] if same else next(parts) for col, same in zip(key_cols, constant, strict=True))

    return {full_key(value): idxs for value, idxs in by_value.items()}


def _mask(cols: list[list[Any]], conds: list[tuple[int, Any]]) -> list[bool]:
    """Which rows pass every `where` condition (a null never passes), evaluated once per chunk."""
    mask: list[bool] | None = None
    for cp, pred in conds:
        col = cols[cp]
        # a where-field (a flag, a status) has few distinct values: decide each once, then look up
        decided = {v: v is not None and bool(pred(v)) for v in set(col)}
        passed = take(decided, col)
        mask = passed if mask is None else list(map(operator.and_, mask, passed))
    assert mask is not None
    return mask


class Distinct:
    """The values a count_distinct has seen, counted when the date is finished.

    Ids are ints: they are kept in an `array('q')` (8 bytes each, repeats included) instead of a set
    (about 55 bytes per value with its int object), and deduplicated one group at a time by `len`.
    A day's sets were what made memory grow with the rows per day. Any other value (text, decimals)
    moves everything to a set."""

    __slots__ = ("ints", "other")

    def __init__(self) -> None:
        self.ints: array[int] | None = array("q")
        self.other: set[Any] = set()

    def update(self, values: list[Any], ints: bool = False) -> None:
        """`ints`: the values are known to be ints (never flags), so they need no type check."""
        if self.ints is not None:
            size = len(self.ints)
            try:
                if ints or not any(map(bool.__instancecheck__, values)):
                    self.ints.extend(values)
                    return
            except (TypeError, OverflowError):
                del self.ints[size:]  # drop what the failed extend took in
            self.other.update(self.ints)
            self.ints = None
        self.other.update(values)

    def __len__(self) -> int:
        return len(set(self.ints)) if self.ints is not None else len(self.other)


def _reduce(kind: str, acc: Any, values: list[Any], ints: bool = False) -> Any:
    """Fold a bucket of non-null values into a metric's running accumulator (`ints`: all ints)."""
    if kind == "count_distinct":
        acc = acc if acc is not None else Distinct()
        acc.update(values, ints)
        return acc
    if not values:
        return acc
    if kind == "sum":
        total = sum(values)
        return total if acc is None else acc + total
    if kind == "count":
        return len(values) if acc is None else acc + len(values)
    if kind == "min":
        low = min(values)
        return low if acc is None or low < acc else acc
    high = max(values)  # max
    return high if acc is None or high > acc else acc


def _final(metric: Metric, kind: str, acc: Any, done: dict[str, Any]) -> Any:
    if kind == "ratio":
        assert metric.ratio is not None
        num, den = (done.get(name) for name in metric.ratio)
        if num is None or den is None or den == 0:
            return Decimal(0)
        return Decimal(num) / Decimal(den)
    if kind == "count_distinct":
        return len(acc) if acc is not None else 0  # len() of a Distinct deduplicates: once
    if kind in ("sum", "count"):
        return 0 if acc is None else acc
    return acc  # min/max: None when no row had a value
