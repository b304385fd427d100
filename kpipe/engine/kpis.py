"""KPI items from live processed rows: pure aggregation, no I/O.

A `KpiPlan` is compiled once from `pipeline.yaml`: for every dataset that feeds a KPI it lists the
fields to read, and for every table the group key and the metrics. `DateAggregator` then takes the
live rows of one `order_date` and returns each table's complete set of items for that date.

>>> from decimal import Decimal
>>> finish_number(Decimal("49.505"), 2), finish_number(Decimal(1) / Decimal(3), 4), finish_number(3, None)
(Decimal('49.51'), Decimal('0.3333'), 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from chalicelib.config import Metric, PipelineConfig
from kpipe.engine.parsing import reader_for
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
                conds = [(pos(src, c.field), check_predicate(c)) for c in metric.where]
                source.metrics.append((i, metric.kind, pos(src, metric.field), conds))
            tables.append(plan)
        types = {ds: [cfg.field_type(ds, f) for f in names] for ds, names in fields.items()}
        return cls(fields, types, tables)

    def readers(self, dataset: str) -> list[Any]:
        return [reader_for(t) for t in self.types[dataset]]


class DateAggregator:
    """Accumulates live rows (typed tuples in `KpiPlan.fields` order) and yields finished items."""

    def __init__(self, plan: KpiPlan) -> None:
        self.plan = plan
        self.groups: list[dict[tuple[Any, ...], list[Any]]] = [{} for _ in plan.tables]

    def add(self, dataset: str, rows: Sequence[Sequence[Any]]) -> None:
        for t_index, table in enumerate(self.plan.tables):
            source = table.sources.get(dataset)
            if source is None:
                continue
            groups = self.groups[t_index]
            n_metrics = len(table.metrics)
            key_pos, metrics = source.key_pos, source.metrics
            for row in rows:
                key = tuple(row[p] for p in key_pos)
                if None in key:
                    continue  # a row without its key fields cannot be placed in this table
                accs = groups.get(key)
                if accs is None:
                    accs = groups[key] = [None] * n_metrics
                for m_index, kind, fpos, conds in metrics:
                    value = row[fpos]
                    if value is None or not all(row[cp] is not None and pred(row[cp]) for cp, pred in conds):
                        continue
                    accs[m_index] = _accumulate(kind, accs[m_index], value)

    def items(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for t_index, table in enumerate(self.plan.tables):
            items = []
            for key in sorted(self.groups[t_index], key=lambda k: tuple(str(x) for x in k)):
                accs = self.groups[t_index][key]
                values: dict[str, Any] = {}
                for name, metric, acc in zip(table.metric_names, table.metrics, accs, strict=True):
                    values[name] = _final(metric, acc, values)
                item: dict[str, Any] = {k: str(v) for k, v in zip(table.key, key, strict=True)}
                for name, metric in zip(table.metric_names, table.metrics, strict=True):
                    if metric.store and values[name] is not None:
                        item[name] = finish_number(values[name], metric.round)
                items.append(item)
            out[table.name] = items
        return out


def _accumulate(kind: str, acc: Any, value: Any) -> Any:
    if kind == "sum":
        return value if acc is None else acc + value
    if kind == "count":
        return 1 if acc is None else acc + 1
    if kind == "count_distinct":
        if acc is None:
            acc = set()
        acc.add(value)
        return acc
    if kind == "min":
        return value if acc is None or value < acc else acc
    return value if acc is None or value > acc else acc  # max


def _final(metric: Metric, acc: Any, done: dict[str, Any]) -> Any:
    kind = metric.kind
    if kind == "ratio":
        assert metric.ratio is not None
        num, den = (done.get(name) for name in metric.ratio)
        if num is None or den is None or den == 0:
            return Decimal(0)
        return Decimal(num) / Decimal(den)
    if kind == "count_distinct":
        return len(acc) if acc else 0
    if kind in ("sum", "count"):
        return 0 if acc is None else acc
    return acc  # min/max: None when no row had a value
