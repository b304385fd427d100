"""The model of `pipeline.yaml`: every row rule and KPI the pipeline applies.

The file is the only place a user changes behaviour, so loading it is strict: unknown keys, wrong
types and dangling references are refused together, each with its YAML path and what is allowed
there. Nothing in the file is ever evaluated as code: rules, derived fields and metrics come from a
small closed vocabulary that this module spells out.
"""

from __future__ import annotations

import copy
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from chalicelib import yaml_strict
from kpipe.engine.vocabulary import (
    CHECKS,
    DERIVED,
    EQUATABLE,
    GRAINS,
    METRICS,
    ROW_CHECKS,
    TYPES,
    Operator,
    Scalar,
    check_operand,
    operand_value,
)
from kpipe.engine.vocabulary import NUMERIC as NUMERIC_TYPES

ColumnType = Literal[tuple(TYPES)]  # type: ignore[valid-type]
FieldType = Literal[(*TYPES, "date", "bool")]  # type: ignore[valid-type]
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def _below(value: str) -> str:
    """A key path that stays below where it is put: not absolute, no `.` or `..` step (a prefix
    `../../x/` or a glob `../outside/*.csv` would reach out of the bucket's layout)."""
    if value.startswith("/") or any(part in (".", "..") for part in value.split("/")):
        raise ValueError(f"{value!r} climbs out or is absolute; allowed: a relative path with no '.' or '..' part")
    return value


Prefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-/]+/$"), AfterValidator(_below)]
Glob = Annotated[str, StringConstraints(min_length=1), AfterValidator(_below)]

COMPARISONS = ("gt", "ge", "lt", "le", "eq", "ne")


class ConfigError(Exception):
    """A refused `pipeline.yaml`, carrying every problem found (not just the first)."""

    def __init__(self, problems: list[str], source: str = "pipeline.yaml") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _OneOf(_Strict):
    """A model whose fields are the terms of one registry: exactly one of them is given."""

    _terms: ClassVar[tuple[str, ...]] = ()
    _what: ClassVar[str] = ""

    @model_validator(mode="after")
    def _exactly_one(self) -> _OneOf:
        given = self.operators()
        if len(given) != 1:
            raise ValueError(f"{self._what} needs exactly one of them, found {given or 'none'}; allowed: {', '.join(self._terms)}")
        return self

    def operators(self) -> list[str]:
        return [t for t in self._terms if getattr(self, t) is not None]

    @property
    def op(self) -> str:
        return self.operators()[0]

    @property
    def operand(self) -> Any:
        return getattr(self, self.op)


def _terms_model(name: str, base: type[_OneOf], terms: dict[str, Any], what: str, specs: dict[str, Any] | None = None, **extra: Any) -> Any:
    """A model with one optional field per registry term (the registry's YAML shape, or its model in
    `specs`), plus `extra`."""
    specs = specs or {}
    fields: dict[str, Any] = {t: (specs.get(t, term.shape) | None, Field(None, description=term.meaning)) for t, term in terms.items()}
    model = create_model(name, __base__=base, **fields, **extra)  # type: ignore[call-overload]
    model._terms = tuple(terms)
    model._what = what
    return model


class EqualsSpec(_Strict):
    field: Identifier
    value: Scalar
    ignore_case: bool = False


class LookupSpec(_Strict):
    via: Identifier = Field(description="a column of this dataset that `references` another dataset")
    field: Identifier = Field(description="a column or derived field of the referenced dataset")


class DateOfSpec(_Strict):
    field: Identifier = Field(description="a datetime field of this dataset")
    grain: Literal[GRAINS] = Field("day", description="day: its date; week: the Monday of its ISO week (a date); month: `YYYY-MM` (text)")  # type: ignore[valid-type]


class LengthSpec(_Strict):
    min: Annotated[int, Field(ge=0, strict=True)] | None = Field(None, description="the fewest characters")
    max: Annotated[int, Field(ge=0, strict=True)] | None = Field(None, description="the most characters")

    @model_validator(mode="after")
    def _bounds(self) -> LengthSpec:
        if self.min is None and self.max is None:
            raise ValueError("neither min nor max is given; allowed: {min: N}, {max: N} or both, N >= 0")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}; allowed: min <= max")
        return self


# `date_of: created_at` or `date_of: {field: created_at, grain: week}`: a mapping is read as the spec alone
# (one error, at its own path; union tags start with `~` and are left out of error paths)
DateOf = Annotated[
    Annotated[Identifier, Tag("~field")] | Annotated[DateOfSpec, Tag("~mapping")],
    Discriminator(lambda v: "~mapping" if isinstance(v, dict | DateOfSpec) else "~field"),
]
_SPEC_MODELS: dict[str, Any] = {"equals": EqualsSpec, "lookup": LookupSpec, "date_of": DateOf}

Check = _terms_model("Check", _OneOf, CHECKS, "a check", {"length": LengthSpec}, ignore_case=(bool, False))
RowCheck = _terms_model("RowCheck", _OneOf, ROW_CHECKS, "a row check", {"compare": tuple[Identifier, Operator, Identifier]})
Condition = _terms_model("Condition", Check, {}, "a filter", field=(Identifier, ...))
Condition._terms = Check._terms


class _DerivedBase(_OneOf):
    pass


Derived = create_model(  # type: ignore[call-overload]
    "Derived",
    __base__=_DerivedBase,
    **{
        name: ((_SPEC_MODELS.get(name) or (Identifier if term.shape is str else term.shape)) | None, Field(None, description=term.meaning))
        for name, term in DERIVED.items()
    },
)
Derived._terms = tuple(DERIVED)
Derived._what = "a derived field"


class Column(_Strict):
    """A column of a dataset, found in the file by its header name (`source`, default: its own name)."""

    type: ColumnType = "string"
    source: str | None = None
    required: bool = False
    unique: bool = False
    default: Scalar | None = None
    checks: list[Check] = Field(default_factory=list)  # type: ignore[valid-type]
    references: Identifier | None = None
    scale: Annotated[int, Field(ge=0, le=18)] = Field(
        6, description="decimal columns: fraction digits kept exactly (a value with more is rejected)"
    )

    def header(self, name: str) -> str:
        return self.source if self.source is not None else name


class Dataset(_Strict):
    files: Glob = Field(description="glob below the raw prefix, e.g. orders/*.csv")
    key: Identifier = Field(description="the column identifying a row; a later batch's row replaces it")
    columns: dict[Identifier, Column]
    derived: dict[Identifier, Derived] = Field(default_factory=dict)
    checks: list[RowCheck] = Field(  # type: ignore[valid-type]
        default_factory=list, description="checks across the columns of a row (see Row checks), after each column's own rules"
    )
    partition_by: Identifier | None = Field(
        None, description="the date field the processed store is partitioned on (KPI datasets only)"
    )
    reject_threshold: Annotated[Decimal, Field(ge=0, le=1)] | None = Field(
        None, description="fraction of rejected rows above which the batch fails"
    )

    def fields(self) -> list[str]:
        return [*self.columns, *self.derived]


class _MetricBase(_OneOf):
    """One KPI attribute: an aggregate over a dataset, or a combination of other metrics."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _shape(self) -> _MetricBase:
        kind = self.op
        if METRICS[kind].combines:
            if self.from_ is not None or self.where:
                raise ValueError(f"`{kind}` combines two metrics; allowed: {kind}, round, store (no `from` or `where`)")
        elif self.from_ is None:
            raise ValueError(f"`{kind}` needs the dataset it reads; allowed: from: <one of the datasets>")
        return self

    def kinds(self) -> list[str]:
        return self.operators()

    @property
    def kind(self) -> str:
        return self.op

    @property
    def field(self) -> str | None:
        return None if METRICS[self.kind].combines else getattr(self, self.kind)


Metric = create_model(  # type: ignore[call-overload]
    "Metric",
    __base__=_MetricBase,
    **{
        name: ((Identifier if term.shape is str else tuple[Identifier, Identifier]) | None, Field(None, description=term.meaning))
        for name, term in METRICS.items()
    },
    from_=(Identifier | None, Field(None, alias="from")),
    where=(list[Condition], Field(default_factory=list)),  # type: ignore[valid-type]
    round=(Annotated[int, Field(ge=0, le=10)] | None, None),
    store=(bool, Field(True, description="false: an intermediate used by a ratio, not stored")),
)
Metric._terms = tuple(METRICS)
Metric._what = "a metric"


class IndexSpec(_Strict):
    name: str
    key: Identifier


class KpiTable(_Strict):
    key: list[Identifier] = Field(
        min_length=1, max_length=3, description="one to three fields every dataset the metrics read has; the first is the DynamoDB partition key"
    )
    index: IndexSpec | None = None
    metrics: dict[Identifier, Metric] = Field(min_length=1)


class Storage(_Strict):
    raw: Prefix = "raw-data/"
    validated: Prefix = "validated/"
    rejected: Prefix = "rejected/"
    processed: Prefix = "processed/"
    archived: Prefix = "archived/"
    reports: Prefix = "reports/"
    quarantine: Prefix = "quarantine/"
    config: Prefix = "config/"


class Trigger(_Strict):
    settle_seconds: Annotated[int, Field(ge=0, le=3600)] = 30


class Scale(_Strict):
    """Map-state fan-out of the transform on AWS: a big batch's dates recomputed by that many tasks at once."""

    transform_concurrency: Annotated[int, Field(ge=1, le=40)] = 4


class Engine(_Strict):
    """Which executor runs the plan, and the DuckDB executor's bounds (sane for a 2 vCPU / 4 GiB task)."""

    executor: Literal["duckdb", "petl"] = Field("duckdb", description="duckdb: fast, the default; petl: the reference")
    memory_limit: Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|KiB|MiB|GiB)$")] = Field(
        "300MB", description="what DuckDB may hold before it spills to temp_directory (the process stays within ~2x)"
    )
    threads: Annotated[int, Field(ge=1, le=64)] | None = Field(None, description="default: the CPUs the task has")
    temp_directory: str | None = Field(None, description="where DuckDB spills; default: the work directory")


class PipelineConfig(_Strict):
    """The whole of `pipeline.yaml`."""

    version: Literal[1] = 1
    timezone: str = "UTC"
    trigger: Trigger = Field(default_factory=Trigger)
    storage: Storage = Field(default_factory=Storage)
    scale: Scale = Field(default_factory=Scale)
    engine: Engine = Field(default_factory=Engine)
    datasets: dict[Identifier, Dataset] = Field(min_length=1)
    kpis: dict[Identifier, KpiTable] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not a time zone; allowed: an IANA name, e.g. UTC or Europe/Berlin") from exc
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def dataset_order(self) -> list[str]:
        """Datasets in dependency order: a referenced dataset is validated before those that point at it.
        Raises ValueError on a reference cycle (refused when the file is loaded)."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order:
                return
            if name in visiting:
                raise ValueError(f"references form a cycle through '{name}'")
            visiting.add(name)
            for column in self.datasets[name].columns.values():
                if column.references in self.datasets:
                    visit(column.references)
            visiting.discard(name)
            order.append(name)

        for name in self.datasets:
            visit(name)
        return order

    def field_type(self, dataset: str, field: str) -> str:
        """The type a field has after validation, following lookups into referenced datasets."""
        ds = self.datasets[dataset]
        if field in ds.columns:
            return ds.columns[field].type
        spec = ds.derived[field]
        if spec.op == "lookup":
            target = ds.columns[spec.lookup.via].references
            assert target is not None
            return self.field_type(target, spec.lookup.field)
        inputs = DERIVED[spec.op].inputs(spec.operand)
        return DERIVED[spec.op].result(spec.operand, [self.field_type(dataset, f) for f in inputs])

    def field_scale(self, dataset: str, field: str) -> int:
        """Fraction digits a decimal field holds: its column's scale; a product's is the sum of its factors'."""
        ds = self.datasets[dataset]
        if field in ds.columns:
            return ds.columns[field].scale if ds.columns[field].type == "decimal" else 0
        spec = ds.derived[field]
        if spec.op == "lookup":
            target = ds.columns[spec.lookup.via].references
            assert target is not None
            return self.field_scale(target, spec.lookup.field)
        return sum(self.field_scale(dataset, f) for f in DERIVED[spec.op].inputs(spec.operand)) if spec.op == "multiply" else 0

    def date_source(self, dataset: str, field: str) -> tuple[str, str, str] | None:
        """(dataset, datetime column, grain) when the field is a `date_of` of that column, directly or
        through lookups; None for any other field."""
        ds = self.datasets.get(dataset)
        if ds is None or field not in ds.derived:
            return None
        spec = ds.derived[field]
        if spec.op == "lookup":
            target = ds.columns[spec.lookup.via].references if spec.lookup.via in ds.columns else None
            return self.date_source(target, spec.lookup.field) if target else None
        if spec.op != "date_of":
            return None
        operand = spec.operand
        column = operand if isinstance(operand, str) else operand.field
        return dataset, column, str(getattr(operand, "grain", None) or "day")

    def sources_of(self, table_name: str) -> list[str]:
        """The datasets a KPI table's aggregates read, in declaration order."""
        metrics = self.kpis[table_name].metrics.values()
        return list(dict.fromkeys(m.from_ for m in metrics if not METRICS[m.kind].combines and m.from_ in self.datasets))

    def period_of(self, table_name: str) -> tuple[str, str] | None:
        """(key field, grain) of the first key field that is a calendar period of the store's partition
        date in every dataset the table reads: its items are replaced a period at a time, and a batch
        recomputes just the periods of the dates it touched. None: the table's items span every date
        (a per-brand all-time table), so each batch recomputes the whole table."""
        sources = self.sources_of(table_name)
        for field in self.kpis[table_name].key:
            grains = set()
            for name in sources:
                ds = self.datasets[name]
                if field == ds.partition_by:
                    grains.add("day")
                    continue
                mine, day = self.date_source(name, field), self.date_source(name, ds.partition_by or "")
                if mine is None or day is None or mine[:2] != day[:2] or day[2] != "day":
                    break
                grains.add(mine[2])
            else:
                if sources and len(grains) == 1:
                    return field, grains.pop()
        return None


# --------------------------------------------------------------------------------------------------
# Cross-field checks: the ones a schema alone cannot express. Each returns "path: problem; allowed".


def _semantic_problems(cfg: PipelineConfig) -> list[str]:
    problems: list[str] = []
    names = list(cfg.datasets)
    for ds_name, ds in cfg.datasets.items():
        base = f"datasets.{ds_name}"
        if ds.key not in ds.columns:
            problems.append(f"{base}.key: '{ds.key}' is not a column; allowed: one of {list(ds.columns)}")
        elif not ds.columns[ds.key].required:
            problems.append(f"{base}.columns.{ds.key}.required: the key column must be required; allowed: true")
        for col_name, col in ds.columns.items():
            cpath = f"{base}.columns.{col_name}"
            if col.references is not None:
                if col.references not in cfg.datasets:
                    problems.append(f"{cpath}.references: unknown dataset '{col.references}'; allowed: {names}")
                elif col.references == ds_name:
                    problems.append(f"{cpath}.references: a dataset cannot reference itself; allowed: {names}")
                elif (key := cfg.datasets[col.references].columns.get(cfg.datasets[col.references].key)) is not None and (
                    key.type != col.type and not {key.type, col.type} <= set(NUMERIC_TYPES)
                ):  # values compare as values: a text never equals a number
                    problems.append(
                        f"{cpath}.references: {col.references} is keyed by a {key.type}, this column is a {col.type};"
                        f" allowed: a {key.type} column{' (or another numeric type)' if key.type in NUMERIC_TYPES else ''}"
                    )
            for i, check in enumerate(col.checks):
                problems.extend(_check_problems(check, col.type, f"{cpath}.checks[{i}]"))
            if col.default is not None and col.required:
                problems.append(f"{cpath}.default: a required column cannot have a default; allowed: required: false")
            if col.default is not None and col.type in ("int", "decimal"):
                try:
                    Decimal(str(col.default))
                except ArithmeticError:
                    problems.append(f"{cpath}.default: '{col.default}' is not a {col.type}; allowed: a number")
        seen: list[str] = list(ds.columns)
        for d_name, spec in ds.derived.items():
            dpath = f"{base}.derived.{d_name}.{spec.op}"
            if d_name in ds.columns:
                problems.append(f"{base}.derived.{d_name}: clashes with a column; allowed: a new name")
            problems.extend(_derived_problems(cfg, ds_name, spec, seen, dpath))
            seen.append(d_name)
        problems.extend(_row_check_problems(ds, base))
        if ds.partition_by is not None and ds.partition_by not in ds.fields():
            problems.append(
                f"{base}.partition_by: '{ds.partition_by}' is not a field; allowed: one of {ds.fields()}"
            )
    try:
        cfg.dataset_order()
    except ValueError as exc:
        problems.append(f"datasets: {exc}; allowed: references that form no cycle (a dataset is validated after those it references)")
    for t_name, table in cfg.kpis.items():
        problems.extend(_table_problems(cfg, t_name, table))
    return problems


def _check_problems(check: Any, field_type: str | None, path: str) -> list[str]:
    """A check (or `where` filter) on a field of `field_type`: allowed there, and its operand readable so."""
    term = CHECKS[check.op]
    if field_type is None:
        return []
    if field_type not in term.types:
        fits = [name for name, t in CHECKS.items() if field_type in t.types]
        return [f"{path}.{check.op}: applies to {'numeric' if term.types == NUMERIC_TYPES else ', '.join(term.types)} fields, not to a {field_type} field; allowed on {field_type}: {', '.join(fits) or 'none'}"]
    try:
        check_operand(check.op, check.operand, field_type)
    except (ArithmeticError, ValueError) as exc:
        if term.read is None:
            return [f"{path}.{check.op}: {check.operand!r} is not a {field_type}; allowed: values of the field's type"]
        why = str(exc)
        if check.op == "matches":
            why = f"{check.operand!r} is not a pattern both executors read alike: {why}"
            if "; allowed:" not in why:
                why += "; allowed: Python `re` syntax without lookarounds, backreferences, conditional or atomic groups, possessive quantifiers or inline flags, counts up to 1000"
        return [f"{path}.{check.op}: {why}"]
    return []


def _row_check_problems(ds: Dataset, base: str) -> list[str]:
    """A dataset's row checks: each reads columns of the dataset (derived fields are computed after the
    checks) of types it applies to, and no two give the same reason."""
    problems: list[str] = []
    rules: dict[str, int] = {}
    columns = list(ds.columns)
    for i, check in enumerate(ds.checks):
        term = ROW_CHECKS[check.op]
        path = f"{base}.checks[{i}].{check.op}"
        inputs = term.inputs(check.operand)
        unknown = False
        for j, name in zip((0, 2) if check.op == "compare" else range(len(inputs)), inputs, strict=True):
            if name not in ds.columns:
                unknown = True
                where = (f"'{name}' is a derived field, computed after the checks; allowed: a column, one of {columns}" if name in ds.derived
                         else f"unknown column '{name}'; allowed: one of {columns}")
                problems.append(f"{path}[{j}]: {where}")
        if unknown:
            continue
        if len(set(inputs)) < len(inputs):
            problems.append(f"{path}: compares '{inputs[0]}' with itself; allowed: two different columns")
            continue
        types = [ds.columns[name].type for name in inputs]
        if not term.applies(types):
            shown = ", ".join(f"'{n}' is a {t}" for n, t in zip(inputs, types, strict=True))
            problems.append(f"{path}: {shown}; allowed: {term.allowed}")
            continue
        rule = term.rule(check.operand)
        if rule in rules:
            problems.append(f"{path}: the same check as checks[{rules[rule]}] (rule {rule}); allowed: each check once")
        rules.setdefault(rule, i)
    return problems


def _safe_type(cfg: PipelineConfig, dataset: str, field: str) -> str | None:
    """A field's type, or None when it rests on a field that is itself in error (reported elsewhere)."""
    try:
        return cfg.field_type(dataset, field)
    except (KeyError, AssertionError, ValueError):
        return None


def _derived_problems(cfg: PipelineConfig, ds_name: str, spec: Derived, seen: list[str], path: str) -> list[str]:
    ds = cfg.datasets[ds_name]
    problems: list[str] = []

    def need(field: str, types: tuple[str, ...], where: str) -> None:
        if field not in seen:
            problems.append(f"{where}: unknown field '{field}'; allowed: a column or an earlier derived field {seen}")
        elif (found := _safe_type(cfg, ds_name, field)) is not None and found not in types:
            problems.append(f"{where}: '{field}' has type {found}; allowed types: {list(types)}")

    term = DERIVED[spec.op]
    if spec.op == "equals":
        if spec.equals.field not in seen:
            problems.append(f"{path}.field: unknown field '{spec.equals.field}'; allowed: {seen}")
        elif (found := _safe_type(cfg, ds_name, spec.equals.field)) is not None:
            if found not in EQUATABLE:
                problems.append(f"{path}.field: '{spec.equals.field}' has type {found}; allowed types: {list(EQUATABLE)}")
            else:
                try:
                    operand_value(spec.equals.value, found)
                except (ArithmeticError, ValueError):
                    problems.append(f"{path}.value: {spec.equals.value!r} is not a {found}; allowed: a value of the field's type")
    elif spec.op != "lookup":
        inputs = term.inputs(spec.operand)
        for i, f in enumerate(inputs):
            allowed = term.input_types[i] if i < len(term.input_types) else ()
            where = f"{path}[{i}]" if len(inputs) > 1 else f"{path}.field" if isinstance(spec.operand, BaseModel) else path
            need(f, allowed or ("string", "int", "decimal", "datetime", "date", "bool"), where)
        if spec.op == "multiply" and not problems:  # a product's scale is the sum of its factors' (DECIMAL(38, s))
            try:
                scale = sum(cfg.field_scale(ds_name, f) for f in inputs)
            except (KeyError, AssertionError):
                scale = 0
            if scale > 38:
                problems.append(f"{path}: the product would keep {scale} fraction digits; allowed: factors whose scales add up to at most 38")
    elif spec.lookup:
        via = spec.lookup.via
        target = ds.columns[via].references if via in ds.columns else None
        if target is None or target not in cfg.datasets:
            refs = [c for c, col in ds.columns.items() if col.references]
            problems.append(f"{path}.via: '{via}' is not a column with `references`; allowed: {refs}")
        elif spec.lookup.field not in cfg.datasets[target].fields():
            problems.append(
                f"{path}.field: '{spec.lookup.field}' is not a field of {target}; "
                f"allowed: {cfg.datasets[target].fields()}"
            )
    return problems


def _table_problems(cfg: PipelineConfig, t_name: str, table: KpiTable) -> list[str]:
    base = f"kpis.{t_name}"
    problems: list[str] = []
    if table.index is not None and table.index.key not in table.key:
        problems.append(f"{base}.index.key: '{table.index.key}' is not a key field; allowed: {table.key}")
    partition_fields = {ds.partition_by for ds in cfg.datasets.values() if ds.partition_by}
    if len(partition_fields) > 1:
        problems.append(
            f"datasets: all partitioned datasets must share one partition field; found {sorted(partition_fields)}"
        )
    if len(set(table.key)) != len(table.key):
        problems.append(f"{base}.key: a field is named twice; allowed: distinct fields")
    defined: list[str] = []
    for m_name, metric in table.metrics.items():
        mpath = f"{base}.metrics.{m_name}"
        if METRICS[metric.kind].combines:
            for i, ref in enumerate(metric.operand):
                if ref not in table.metrics:
                    problems.append(f"{mpath}.ratio[{i}]: unknown metric '{ref}'; allowed: {list(table.metrics)}")
                elif ref == m_name or (METRICS[table.metrics[ref].kind].combines and ref not in defined):
                    problems.append(f"{mpath}.ratio[{i}]: '{ref}' must be a metric defined above; allowed: {defined}")
                elif (other := table.metrics[ref]).kind in ("min", "max") and (
                    found := _safe_type(cfg, other.from_, other.field)
                ) not in (*NUMERIC_TYPES, None):  # min and max have the field's type
                    problems.append(f"{mpath}.ratio[{i}]: '{ref}' is the {other.kind} of a {found} field, not a number; allowed: a numeric metric")
            defined.append(m_name)
            continue
        defined.append(m_name)
        src = metric.from_
        if src not in cfg.datasets:
            problems.append(f"{mpath}.from: unknown dataset '{src}'; allowed: {list(cfg.datasets)}")
            continue
        ds = cfg.datasets[src]
        if ds.partition_by is None:
            parted = [n for n, d in cfg.datasets.items() if d.partition_by]
            problems.append(f"{mpath}.from: '{src}' has no partition_by, so it cannot feed a KPI; allowed: {parted}")
        fields = ds.fields()
        missing_keys = [k for k in table.key if k not in fields]
        if missing_keys:
            problems.append(f"{mpath}.from: '{src}' lacks the table key fields {missing_keys}; allowed: a dataset having {table.key}")
        field = metric.field
        assert field is not None
        if field not in fields:
            problems.append(f"{mpath}.{metric.kind}: unknown field '{field}' of {src}; allowed: {fields}")
        elif METRICS[metric.kind].types and (found := _safe_type(cfg, src, field)) not in (*METRICS[metric.kind].types, None):
            problems.append(f"{mpath}.{metric.kind}: '{field}' has type {found}; allowed: a field of type {', '.join(METRICS[metric.kind].types)}")
        elif metric.round is not None and metric.kind in ("min", "max") and (found := _safe_type(cfg, src, field)) not in (*NUMERIC_TYPES, None):
            problems.append(f"{mpath}.round: the {metric.kind} of a {found} field is not a number; allowed: round on numeric metrics")
        for i, cond in enumerate(metric.where):
            if cond.field not in fields:
                problems.append(f"{mpath}.where[{i}].field: unknown field '{cond.field}' of {src}; allowed: {fields}")
            else:
                problems.extend(_check_problems(cond, _safe_type(cfg, src, cond.field), f"{mpath}.where[{i}]"))
    return problems


# --------------------------------------------------------------------------------------------------
# Loading


def _format_pydantic(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        path = _error_path(e["loc"])
        problems.append(f"{path or '<root>'}: {_describe(e)}")
    return problems


def _error_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(_loc_part(p) for p in loc if not str(p).startswith(("function-after", "~"))).replace(".[", "[")


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_PATTERN_HINTS = {Prefix.__metadata__[0].pattern: "a prefix of letters, digits, _ . - / ending in '/'"}  # type: ignore[attr-defined]


def _describe(e: Any) -> str:
    """One pydantic error as `what is wrong; allowed: what is allowed`."""
    kind, ctx, given = e["type"], e.get("ctx") or {}, e.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(e["loc"][:-1])
        return f"unknown key; allowed: {', '.join(allowed)}" if allowed else "unknown key; allowed: no keys here"
    if kind == "missing":
        return "required key is missing; allowed: it must be given"
    if kind == "value_error":
        return str(e["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        return f"{given!r} is not allowed; allowed: {ctx.get('expected')}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return f"{given!r} is out of range; allowed: a value {_BOUNDS[kind]} {bound}"
    if kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(ctx.get("pattern"), f"text matching {ctx.get('pattern')}")
        return f"{given!r} is not allowed; allowed: {hint}"
    if kind in ("too_short", "too_long"):
        return f"{e['msg']}; allowed: between {ctx.get('min_length', 0)} and {ctx.get('max_length', 'any number of')} entries"
    return f"{e['msg']} (got {given!r}); allowed: see pipeline.schema.json"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """Walk the models along an error location, to say which keys that level accepts."""
    model: type[BaseModel] | None = PipelineConfig
    pending: list[Any] = []
    for part in loc:
        if pending:  # inside a dict value or list item: this part is the key/index
            ann = pending.pop()
            model = _first_model(ann)
            continue
        if model is None or not isinstance(part, str):
            return None
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        origin = getattr(field.annotation, "__origin__", None)
        if origin in (dict, list):
            pending.append(field.annotation)
            model = None
        else:
            model = _first_model(field.annotation)
    return model


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    model = _model_at(tuple(p for p in loc if not str(p).startswith(("function-after", "~"))))
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _loc_part(part: int | str) -> str:
    if isinstance(part, int):
        return f"[{part}]"
    return re.sub(r"^(literal|constrained-str|tagged-union)\[.*\]$", "", str(part)) or str(part)


def parse_config(text: str, source: str = "pipeline.yaml") -> PipelineConfig:
    """Parse and fully validate YAML text; raise ConfigError listing every problem."""
    try:
        data = yaml_strict.load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"<yaml>: not valid YAML: {exc}"], source) from exc
    except yaml_strict.StrictYamlError as exc:
        raise ConfigError(exc.problems, source) from exc
    if not isinstance(data, dict):
        raise ConfigError(["<root>: must be a mapping; allowed: version, timezone, trigger, storage, scale, datasets, kpis"], source)
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = _format_pydantic(exc)
        pruned = _prune_to_valid(data, exc)
        if pruned is not None:  # also report what the rest of the file gets wrong
            problems += [p for p in _semantic_problems(pruned) if p not in problems]
        raise ConfigError(problems, source) from exc
    problems = _semantic_problems(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _prune_to_valid(data: dict[str, Any], exc: ValidationError, rounds: int = 20) -> PipelineConfig | None:
    """Drop each unknown key until the rest validates, so cross-field checks can still run on it
    and a user sees every mistake in one pass. Only unknown keys are dropped: dropping a wrong value
    would let its default stand in and invent problems that are not in the file (None then)."""
    data = copy.deepcopy(data)
    for _ in range(rounds):
        for e in exc.errors():
            loc = [p for p in e["loc"] if not str(p).startswith(("function-after", "~"))]
            if e["type"] != "extra_forbidden" or not loc:
                return None
            parent: Any = data
            for part in loc[:-1]:
                try:
                    parent = parent[part]
                except (KeyError, IndexError, TypeError):
                    return None
            try:
                del parent[loc[-1]]
            except (KeyError, IndexError, TypeError):
                return None
        try:
            return PipelineConfig.model_validate(data)
        except ValidationError as again:
            exc = again
    return None


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    try:
        text = yaml_strict.decode(path.read_bytes())
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read {path}: {exc.strerror}"], str(path)) from exc
    except yaml_strict.StrictYamlError as exc:
        raise ConfigError(exc.problems, str(path)) from exc
    return parse_config(text, str(path))


def default_config_path() -> Path:
    """The repo's pipeline.yaml (also baked into the task image at the same relative place)."""
    return Path(__file__).resolve().parent.parent / "pipeline.yaml"


def json_schema() -> str:
    """The JSON Schema editors use to complete and check pipeline.yaml."""
    schema = PipelineConfig.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "kpipe pipeline.yaml"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
