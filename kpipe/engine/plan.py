"""The plan: what a batch's processing does, compiled once from the config and independent of the executor.

Both executors walk the same plan: the datasets in dependency order, each column's rules as
`(rule id, vocabulary term, typed operand)`, the derived fields in declaration order, the KPI tables'
groupings and metrics. Rule ids are the reasons rejected rows carry, in the order a row lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from chalicelib.config import PipelineConfig
from kpipe.engine.vocabulary import (
    CHECKS,
    DERIVED,
    METRICS,
    NUMERIC,
    ROW_CHECKS,
    TYPES,
    CheckTerm,
    DerivedTerm,
    MetricTerm,
    RowCheckTerm,
    TypeTerm,
    check_operand,
    operand_value,
)

# reasons a row gets before its fields are read
MALFORMED = "row.malformed"  # the record does not have the header's number of fields, or a stray quote
ENCODING = "row.encoding"  # the record holds bytes that are not UTF-8


@dataclass(frozen=True)
class CheckStep:
    rule: str  # e.g. sale_price.gt
    term: CheckTerm
    operand: Any
    ignore_case: bool


@dataclass(frozen=True)
class ColumnStep:
    name: str
    header: str  # the file's header name it is read from
    type: TypeTerm
    scale: int
    required: bool
    unique: bool
    default: Any  # typed, or None
    references: str | None
    checks: tuple[CheckStep, ...]

    @property
    def sql_type(self) -> str:
        return self.type.sql_type(self.scale)


@dataclass(frozen=True)
class DerivedStep:
    name: str
    term: DerivedTerm
    spec: Any
    inputs: tuple[str, ...]
    type: str  # a column type, date or bool
    scale: int
    via: str | None = None  # lookup: the referencing column ...
    target: str | None = None  # ... the referenced dataset ...
    target_field: str | None = None  # ... and the field read there


@dataclass(frozen=True)
class RowCheckStep:
    """A check across columns of a row (`compare`): its rule id, e.g. compare.shipped_at_ge_created_at."""

    rule: str
    term: RowCheckTerm
    operand: Any
    inputs: tuple[str, ...]  # the columns it reads ...
    types: tuple[tuple[str, int], ...]  # ... their types and decimal scales (0 but for decimals)

    def passes(self, values: list[Any]) -> bool:
        """Python's verdict: a null value passes, as with every check."""
        return any(v is None for v in values) or self.term.py(self.operand, values)

    def sql(self, exprs: list[str]) -> str:
        """SQL true when the row fails it."""
        present = " AND ".join(f"{x} IS NOT NULL" for x in exprs)
        return f"{present} AND NOT {self.term.sql(self.operand, exprs, self.types)}"


@dataclass(frozen=True)
class DatasetPlan:
    name: str
    files: str
    key: str
    partition_by: str | None
    columns: tuple[ColumnStep, ...]
    derived: tuple[DerivedStep, ...]
    reject_threshold: Any
    row_checks: tuple[RowCheckStep, ...] = ()  # after every column's rules, in declaration order

    def column(self, name: str) -> ColumnStep:
        return next(c for c in self.columns if c.name == name)

    @property
    def fields(self) -> list[str]:
        return [c.name for c in self.columns] + [d.name for d in self.derived]

    def rules(self) -> list[str]:
        """Every reason a row of this dataset can get, in the order a row lists them."""
        out: list[str] = []
        for c in self.columns:
            out += [f"{c.name}.missing_column"] if c.required else []
            out += [f"{c.name}.duplicate_column"]
            out += [f"{c.name}.required"] if c.required else []
            out += [f"{c.name}.type", f"{c.name}.range"] if c.type.grammar else []
            out += [s.rule for s in c.checks]
            out += [f"{c.name}.unique"] if c.unique else []
            out += [f"{c.name}.references"] if c.references else []
        out += [s.rule for s in self.row_checks]
        out += [f"{d.name}.range" for d in self.derived if d.type in NUMERIC and d.via is None]
        return [*out, MALFORMED, ENCODING]


@dataclass(frozen=True)
class Filter:
    field: str
    term: CheckTerm
    operand: Any
    ignore_case: bool
    field_type: str


@dataclass(frozen=True)
class MetricStep:
    name: str
    term: MetricTerm
    field: str | None  # the field an aggregate reads
    source: str | None  # its dataset
    where: tuple[Filter, ...]
    operands: tuple[str, ...]  # a combining kind's metrics
    round: int | None
    store: bool


@dataclass(frozen=True)
class TablePlan:
    name: str
    key: tuple[str, ...]
    index: Any
    metrics: tuple[MetricStep, ...]

    @property
    def sources(self) -> list[str]:
        return sorted({m.source for m in self.metrics if m.source is not None})

    def aggregates(self, source: str) -> list[MetricStep]:
        return [m for m in self.metrics if m.source == source]


@dataclass(frozen=True)
class Plan:
    timezone: str
    datasets: tuple[DatasetPlan, ...]  # in dependency order
    tables: tuple[TablePlan, ...]
    lookups: dict[str, list[str]] = field(default_factory=dict)  # dataset -> fields others look up in it

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def dataset(self, name: str) -> DatasetPlan:
        return next(d for d in self.datasets if d.name == name)

    def partition_field(self) -> str | None:
        return next((d.partition_by for d in self.datasets if d.partition_by), None)

    def field_type(self, dataset: str, name: str) -> str:
        ds = self.dataset(dataset)
        col = next((c for c in ds.columns if c.name == name), None)
        if col is not None:
            return col.type.name
        return next(d.type for d in ds.derived if d.name == name)


def compile_plan(cfg: PipelineConfig) -> Plan:
    datasets = []
    lookups: dict[str, list[str]] = {}
    for name in cfg.dataset_order():
        ds = cfg.datasets[name]
        columns = []
        for col_name, col in ds.columns.items():
            term = TYPES[col.type]
            default = None
            if col.default is not None:
                text = str(col.default).lower() if isinstance(col.default, bool) else str(col.default)
                default = term.parse(text, cfg.tz, col.scale)
            checks = tuple(
                CheckStep(f"{col_name}.{c.op}", CHECKS[c.op], check_operand(c.op, c.operand, col.type), c.ignore_case) for c in col.checks
            )
            columns.append(
                ColumnStep(col_name, col.header(col_name), term, col.scale, col.required, col.unique, default, col.references, checks)
            )
        derived = []
        for d_name, spec in ds.derived.items():
            term = DERIVED[spec.op]
            kind, scale = cfg.field_type(name, d_name), cfg.field_scale(name, d_name)
            if spec.op == "lookup":
                target = ds.columns[spec.lookup.via].references
                assert target is not None
                lookups.setdefault(target, [])
                if spec.lookup.field not in lookups[target]:
                    lookups[target].append(spec.lookup.field)
                step = DerivedStep(d_name, term, spec.lookup, (spec.lookup.via,), kind, scale, spec.lookup.via, target, spec.lookup.field)
            else:
                operand = spec.operand
                if spec.op == "equals":  # its value read the way its field is, as a check's operand is
                    operand = operand.model_copy(update={"value": operand_value(operand.value, cfg.field_type(name, operand.field))})
                step = DerivedStep(d_name, term, operand, tuple(term.inputs(operand)), kind, scale)
            derived.append(step)
        row_checks = []
        for check in ds.checks:
            term = ROW_CHECKS[check.op]
            inputs = tuple(term.inputs(check.operand))
            kinds = tuple((ds.columns[i].type, ds.columns[i].scale if ds.columns[i].type == "decimal" else 0) for i in inputs)
            row_checks.append(RowCheckStep(term.rule(check.operand), term, tuple(check.operand), inputs, kinds))
        datasets.append(
            DatasetPlan(name, ds.files, ds.key, ds.partition_by, tuple(columns), tuple(derived), ds.reject_threshold, tuple(row_checks))
        )
    tables = []
    for t_name, table in cfg.kpis.items():
        metrics = []
        for m_name, m in table.metrics.items():
            term = METRICS[m.kind]
            if term.combines:
                metrics.append(MetricStep(m_name, term, None, None, (), tuple(m.operand), m.round, m.store))
                continue
            where = tuple(
                Filter(c.field, CHECKS[c.op], check_operand(c.op, c.operand, ft := cfg.field_type(m.from_, c.field)), c.ignore_case, ft)
                for c in m.where
            )
            metrics.append(MetricStep(m_name, term, m.field, m.from_, where, (), m.round, m.store))
        tables.append(TablePlan(t_name, tuple(table.key), table.index, tuple(metrics)))
    return Plan(cfg.timezone, tuple(datasets), tuple(tables), lookups)


def explain_text(plan: Plan, sql: dict[str, str] | None = None) -> str:
    """The plan as a reader sees it: per dataset the rules in order and the derived fields, per table
    the grouping and metrics; with `sql`, the statements the DuckDB executor runs."""
    lines = [f"timezone {plan.timezone}", ""]
    for ds in plan.datasets:
        lines.append(f"dataset {ds.name}: files {ds.files}, key {ds.key}" + (f", partitioned by {ds.partition_by}" if ds.partition_by else ""))
        for c in ds.columns:
            rules = ["required"] if c.required else []
            rules += [s.rule.split(".", 1)[1] + f" {_show(s.operand)}" for s in c.checks]
            rules += ["unique"] if c.unique else []
            rules += [f"references {c.references}"] if c.references else []
            shown = c.type.name + (f"({c.scale})" if c.type.name == "decimal" else "")
            source = f" <- column '{c.header}'" if c.header != c.name else ""
            default = f", default {_show(c.default)}" if c.default is not None else ""
            lines.append(f"  {c.name}: {shown}{source}{default}" + (f"; {', '.join(rules)}" if rules else ""))
        for r in ds.row_checks:
            lines.append(f"  check {r.term.name} {' '.join(map(str, r.operand))}: reason {r.rule}")
        for d in ds.derived:
            how = f"lookup {d.target}.{d.target_field} via {d.via}" if d.via else f"{d.term.name} {_show(d.spec)}"
            lines.append(f"  {d.name} = {how} ({d.type})")
        if ds.reject_threshold is not None:
            lines.append(f"  the batch is rejected when more than {ds.reject_threshold} of its rows are")
        lines.append("")
    for t in plan.tables:
        lines.append(f"table {t.name}: one item per {', '.join(t.key)}")
        for m in t.metrics:
            if m.term.combines:
                what = f"{m.term.name}({', '.join(m.operands)})"
            else:
                what = f"{m.term.name}({m.source}.{m.field})"
                if m.where:
                    what += " where " + " and ".join(f"{f.field} {f.term.name} {_show(f.operand)}" for f in m.where)
            extra = (f", rounded to {m.round}" if m.round is not None else "") + ("" if m.store else ", not stored")
            lines.append(f"  {m.name} = {what}{extra}")
        lines.append("")
    if sql:
        lines.append("-- the SQL the duckdb executor runs")
        for name, text in sql.items():
            lines += [f"-- {name}", text.strip() + ";", ""]
    return "\n".join(lines).rstrip() + "\n"


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if hasattr(value, "model_dump"):
        return str(value.model_dump())
    return str(value)
