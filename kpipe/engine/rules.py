"""A dataset's rules compiled against one file's header into a single row function.

Everything that can be decided once per file (column positions, parsers, check predicates,
reference tables, derived-field steps) is decided in `FileRules.__init__`, so the per-row work is a
flat loop over prepared tuples: no config lookups, no dict building, nothing interpreted per row.

Rule ids, as they appear in reports and rejected files:
`<column>.required`, `<column>.type`, `<column>.<gt|ge|lt|le|eq|ne|between|one_of>`, `<column>.unique`,
`<column>.references`, `<column>.missing_column`, `row.encoding`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Sequence
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from chalicelib.config import Check, Column, Dataset, Derived, PipelineConfig
from kpipe.engine.keys import KeyTable
from kpipe.engine.parsing import datetime_parser, parse_decimal, parse_int, parse_string

Predicate = Callable[[Any], bool]
_COMPARE = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


def parser_for(type_name: str, tz: ZoneInfo) -> Callable[[str], Any]:
    if type_name == "int":
        return parse_int
    if type_name == "decimal":
        return parse_decimal
    if type_name == "datetime":
        return datetime_parser(tz)
    return parse_string


def check_predicate(check: Check) -> Predicate:
    """A check as a plain predicate on a parsed, non-null value."""
    op, operand = check.op, check.operand
    if op in _COMPARE:
        compare, bound = _COMPARE[op], Decimal(operand)
        return lambda v: compare(v, bound)
    if op == "between":
        lo, hi = (Decimal(x) for x in operand)
        return lambda v: lo <= v <= hi
    fold = _folder(check.ignore_case)
    if op == "one_of":
        allowed = {fold(_normal(x)) for x in operand}
        return lambda v: fold(_normal(v)) in allowed
    target = fold(_normal(operand))
    if op == "eq":
        return lambda v: fold(_normal(v)) == target
    return lambda v: fold(_normal(v)) != target  # ne


def _normal(value: Any) -> Any:
    """Compare numbers as Decimal, everything else as text, so `eq: 5` matches "5" and 5.0 alike."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return Decimal(str(value))
    return value


def _folder(ignore_case: bool) -> Callable[[Any], Any]:
    return (lambda v: v.casefold() if isinstance(v, str) else v) if ignore_case else (lambda v: v)


def default_value(column: Column, tz: ZoneInfo) -> Any:
    if column.default is None:
        return None
    return parser_for(column.type, tz)(str(column.default).strip())


class BatchRefs:
    """What a dataset's rows may point at: the valid keys of referenced datasets, each mapped to the
    tuple of the fields that dependents look up (`lookup_fields[dataset]`)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.tables: dict[str, KeyTable] = {}
        self.lookup_fields: dict[str, list[str]] = {name: [] for name in cfg.datasets}
        for ds in cfg.datasets.values():
            for spec in ds.derived.values():
                if spec.lookup is not None:
                    target = ds.columns[spec.lookup.via].references
                    assert target is not None
                    if spec.lookup.field not in self.lookup_fields[target]:
                        self.lookup_fields[target].append(spec.lookup.field)

    def is_referenced(self, cfg: PipelineConfig, name: str) -> bool:
        return any(c.references == name for ds in cfg.datasets.values() for c in ds.columns.values())


class FileRules:
    """One dataset's rules bound to one file's header."""

    def __init__(
        self,
        cfg: PipelineConfig,
        dataset: str,
        header: Sequence[str],
        refs: BatchRefs,
        seen: dict[str, KeyTable],
    ) -> None:
        ds: Dataset = cfg.datasets[dataset]
        tz = cfg.tz
        positions: dict[str, int] = {}
        for i, name in enumerate(header):
            positions.setdefault(name.strip(), i)
        self.missing: list[str] = [
            f"{name}.missing_column"
            for name, col in ds.columns.items()
            if col.required and col.header(name) not in positions
        ]
        self.width = len(header)
        # (name, position or -1, parser, required, default, checks, unique set, reference table)
        self.columns: list[tuple[str, int, Callable[[str], Any], bool, Any, list[tuple[str, Predicate]], Any, Any]] = []
        for name, col in ds.columns.items():
            checks = [(f"{name}.{c.op}", check_predicate(c)) for c in col.checks]
            unique = seen.setdefault(name, KeyTable()) if (col.unique or name == ds.key) else None
            ref = refs.tables.get(col.references) if col.references else None
            if col.references and ref is None:
                ref = KeyTable()  # the referenced dataset had no valid rows: nothing can match
            self.columns.append(
                (
                    name,
                    positions.get(col.header(name), -1),
                    parser_for(col.type, tz),
                    col.required,
                    default_value(col, tz),
                    checks,
                    unique,
                    ref,
                )
            )
        self.index = {name: i for i, name in enumerate(ds.columns)}
        self.derived = [self._derive_step(ds, spec, refs) for spec in ds.derived.values()]
        self.key_pos = self.index[ds.key]
        self.lookup_pos = [self._field_pos(ds, f) for f in refs.lookup_fields[dataset]]

    def _field_pos(self, ds: Dataset, field: str) -> int:
        return [*ds.columns, *ds.derived].index(field)

    def _derive_step(self, ds: Dataset, spec: Derived, refs: BatchRefs) -> Callable[[list[Any]], Any]:
        fields = [*ds.columns, *ds.derived]
        pos = fields.index
        if spec.date_of:
            i = pos(spec.date_of)
            return lambda vals: vals[i].date() if vals[i] is not None else None
        if spec.multiply:
            a, b = (pos(f) for f in spec.multiply)
            return lambda vals: vals[a] * vals[b] if vals[a] is not None and vals[b] is not None else None
        if spec.lower:
            i = pos(spec.lower)
            return lambda vals: vals[i].lower() if vals[i] is not None else None
        if spec.equals:
            i, pred = pos(spec.equals.field), check_predicate(
                Check(eq=spec.equals.value, ignore_case=spec.equals.ignore_case)
            )
            return lambda vals: vals[i] is not None and pred(vals[i])
        assert spec.lookup is not None
        via = pos(spec.lookup.via)
        target = ds.columns[spec.lookup.via].references
        assert target is not None
        table = refs.tables.get(target) or KeyTable()
        slot = refs.lookup_fields[target].index(spec.lookup.field)
        return lambda vals: _lookup(table, vals[via], slot)

    def apply(self, row: Sequence[str]) -> tuple[list[Any] | None, list[str]]:
        """(typed values incl. derived fields, []) for a valid row, (None, reasons) otherwise."""
        if self.missing:
            return None, self.missing
        reasons: list[str] = []
        values: list[Any] = []
        n = len(row)
        for name, idx, parse, required, default, checks, unique, ref in self.columns:
            text = row[idx].strip() if 0 <= idx < n else ""
            if not text:
                values.append(default)
                if required:
                    reasons.append(f"{name}.required")
                continue
            try:
                value = parse(text)
            except (ValueError, ArithmeticError):
                values.append(None)
                reasons.append(f"{name}.type")
                continue
            values.append(value)
            for rule_id, pred in checks:
                if not pred(value):
                    reasons.append(rule_id)
            if unique is not None and not unique.add_new(value):
                reasons.append(f"{name}.unique")
            if ref is not None and value not in ref:
                reasons.append(f"{name}.references")
        if reasons:
            return None, reasons
        for step in self.derived:
            values.append(step(values))
        return values, reasons

    def lookup_value(self, values: list[Any]) -> Any:
        """What dependents of this dataset can look up through this row's key."""
        if not self.lookup_pos:
            return True
        return tuple(values[i] for i in self.lookup_pos)


def _lookup(table: KeyTable, key: Hashable, slot: int) -> Any:
    found = table.get(key)
    return found[slot] if isinstance(found, tuple) else None
