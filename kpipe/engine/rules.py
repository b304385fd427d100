"""A dataset's rules compiled against one file's header.

Everything that can be decided once per file (column positions, parsers, check predicates,
reference tables, derived-field steps, output formatters) is decided in `FileRules.__init__`.
Rows are then decided a chunk at a time, column by column (`apply_chunk`): a column is parsed,
checked, registered and looked up with C-level `map`s, its few bad values (blanks, values outside
its grammar) set aside and parsed one by one, and each rejected row's reasons are gathered column by
column. The row-wise path (`apply`) is the reference semantics: both paths make the same decision
for every row, with the same reasons in the same order (property tests); the columnar one is only
faster.

Rule ids, as they appear in reports and rejected files:
`<column>.required`, `<column>.type`, `<column>.<gt|ge|lt|le|eq|ne|between|one_of>`, `<column>.unique`,
`<column>.references`, `<column>.missing_column`, `row.encoding`.
"""

from __future__ import annotations

import operator
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, getcontext
from itertools import compress, filterfalse, repeat
from operator import is_not, itemgetter
from typing import Any
from zoneinfo import ZoneInfo

from chalicelib.config import Check, Column, Dataset, Derived, PipelineConfig
from kpipe.engine.keys import IntColumn, KeyTable, take
from kpipe.engine.parsing import datetime_parser, format_value, has_none, parse_decimal, parse_int, parse_string

Predicate = Callable[[Any], bool]
# a derived field from the value columns so far and the values already looked up in a column's
# reference table (by column position: the reference check's own lookups, reused)
ColumnStep = Callable[[list[list[Any]], Mapping[int, list[Any]]], list[Any]]
_COMPARE = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}
# bound.__lt__(v) is v > bound, evaluated in C with no Python frame per value
_REFLECTED = {"gt": "__lt__", "ge": "__le__", "lt": "__gt__", "le": "__ge__"}


def parser_for(type_name: str, tz: ZoneInfo) -> Callable[[str], Any]:
    if type_name == "int":
        return parse_int
    if type_name == "decimal":
        return parse_decimal
    if type_name == "datetime":
        return datetime_parser(tz)
    return parse_string


def check_predicate(check: Check, field_type: str = "") -> Predicate:
    """A check as a plain predicate on a parsed, non-null value of a field of `field_type`.

    Operands are read the way the field is: on a string field `one_of: [1, 2]` means the texts
    "1" and "2" (YAML gave ints); on a numeric field `eq: "5"` means the number 5."""
    op, operand = check.op, check.operand
    if op in _COMPARE:
        return getattr(Decimal(operand), _REFLECTED[op])
    if op == "between":
        lo, hi = (Decimal(x) for x in operand)
        return lambda v: lo <= v <= hi
    if isinstance(operand, bool) and op in ("eq", "ne"):  # bool fields hold the True/False singletons
        return (lambda v: v is operand) if op == "eq" else (lambda v: v is not operand)
    normal = _normaliser(field_type)
    fold = _folder(check.ignore_case)
    if op == "one_of":
        allowed = {fold(normal(x)) for x in operand}
        return lambda v: fold(normal(v)) in allowed
    target = fold(normal(operand))
    if op == "eq":
        return lambda v: fold(normal(v)) == target
    return lambda v: fold(normal(v)) != target  # ne


def _normaliser(field_type: str) -> Callable[[Any], Any]:
    if field_type in ("int", "decimal"):
        return lambda x: x if isinstance(x, bool) else Decimal(str(x))
    if field_type in ("string", "date", "datetime"):
        return lambda x: x if isinstance(x, bool) else (x.isoformat() if hasattr(x, "isoformat") else str(x))
    return _normal


def _normal(value: Any) -> Any:
    """Compare numbers as Decimal, everything else as it is."""
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


@dataclass(frozen=True)
class _Col:
    name: str
    pos: int  # position in the file's header, -1 when absent
    parse: Callable[[str], Any]
    required: bool
    default: Any
    checks: list[tuple[str, Predicate]]
    unique: KeyTable | None
    ref: KeyTable | None


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
        self.columns: list[_Col] = []
        for name, col in ds.columns.items():
            ref = None
            if col.references:
                # no valid rows in the referenced dataset: an empty table, so nothing can match
                ref = refs.tables.get(col.references) or KeyTable()
            self.columns.append(
                _Col(
                    name,
                    positions.get(col.header(name), -1),
                    parser_for(col.type, tz),
                    col.required,
                    default_value(col, tz),
                    [(f"{name}.{c.op}", check_predicate(c, col.type)) for c in col.checks],
                    seen.setdefault(name, KeyTable()) if (col.unique or name == ds.key) else None,
                    ref,
                )
            )
        self.getters = [(pos, itemgetter(pos)) for pos in sorted({c.pos for c in self.columns if c.pos >= 0})]
        fields = ds.fields()
        self.derived: list[ColumnStep] = [
            _derive_step(cfg, dataset, spec, refs, fields) for spec in ds.derived.values()
        ]
        self.key_pos = fields.index(ds.key)
        self.lookup_pos = [fields.index(f) for f in refs.lookup_fields[dataset]]
        never_null = {n for n, c in ds.columns.items() if c.required or c.default is not None}
        self.formatters = [_formatter(cfg.field_type(dataset, f), f not in never_null) for f in fields]
        self.plain = [cfg.field_type(dataset, f) != "string" for f in fields]  # their text never needs quotes

    # the reference path: one row --------------------------------------------------------------
    def apply(self, row: Sequence[str]) -> tuple[list[Any] | None, list[str]]:
        """(typed values incl. derived fields, []) for a valid row, (None, reasons) otherwise."""
        if self.missing:
            return None, self.missing
        reasons: list[str] = []
        values: list[Any] = []
        n = len(row)
        for col in self.columns:
            text = row[col.pos].strip() if 0 <= col.pos < n else ""
            if not text:
                values.append(col.default)
                if col.required:
                    reasons.append(f"{col.name}.required")
                continue
            try:
                value = col.parse(text)
            except (ValueError, ArithmeticError):
                values.append(None)
                reasons.append(f"{col.name}.type")
                continue
            values.append(value)
            reasons.extend(rule_id for rule_id, pred in col.checks if not pred(value))
            if col.unique is not None and not col.unique.add_new(value):
                reasons.append(f"{col.name}.unique")
            if col.ref is not None and value not in col.ref:
                reasons.append(f"{col.name}.references")
        if reasons:
            return None, reasons
        cols = [[v] for v in values]
        values.extend(step(cols, {})[0] for step in self.derived)
        return values, reasons

    # the fast path: a chunk, column by column -------------------------------------------------
    def apply_chunk(
        self, rows: list[Sequence[str]]
    ) -> tuple[list[list[Any]], list[tuple[int, list[str]]], list[list[str] | None]]:
        """The value columns of the valid rows (declared columns, then derived fields),
        `(row position, reasons)` for each rejected row (same decisions as `apply`), and per column
        the valid rows' canonical texts when they came cheaply (a declared column's input, see
        `_canonical_texts`; a derived one's from its step's `with_texts`), else None, for
        `format_columns`."""
        n = len(rows)
        if self.missing or not n:
            empty = [[] for _ in range(len(self.columns) + len(self.derived))]
            return empty, [(i, self.missing) for i in range(n)], [None] * len(self.columns)
        # only the declared columns, each cut out in one C-level pass (a raw file has many others)
        column = getattr(rows, "column", None)  # FlatRows: columns are slices of one split
        try:
            if column is not None:
                raw_cols = {pos: column(pos) for pos, _getter in self.getters}
            else:
                raw_cols = {pos: list(map(getter, rows)) for pos, getter in self.getters}
        except IndexError:  # a row too short to hold a declared column: its missing fields are empty
            width = self.width
            rows = [r if len(r) >= width else (*r, *([""] * (width - len(r)))) for r in rows]
            raw_cols = {pos: list(map(getter, rows)) for pos, getter in self.getters}
        cols: list[list[Any]] = []
        texts: list[list[str] | None] = []
        # each rejected row's reasons, column by column in `apply`'s order: a blank required or
        # unparseable value, else its failed checks, then uniqueness, then its reference
        reasons: dict[int, list[str]] = {}
        found: dict[int, list[Any]] = {}
        for c, col in enumerate(self.columns):
            if col.pos < 0:
                # an absent optional column: its default (or null); an int default makes an IntColumn,
                # so the int fast paths (a product by 1, key lookups) take it
                cols.append(IntColumn([col.default] * n) if type(col.default) is int else [col.default] * n)
                texts.append(None)
                continue
            values, blanks, bad, shown = _bulk_parse(raw_cols[col.pos], col.parse, col.required, col.default)
            texts.append(shown)
            cols.append(values)
            if col.required:
                _note(reasons, blanks, f"{col.name}.required")
            _note(reasons, bad, f"{col.name}.type")
            # a blank (its default) or unparseable value is not checked, registered or looked up:
            # the others are, as a column of their own (ints as an IntColumn: the key tables' C paths)
            at: list[tuple[int, int]] | None = None  # the runs of rows whose values are present
            present = values
            if blanks or bad:
                at = _runs(n, (*blanks, *bad))
                present = _gather(values, at)
                if col.parse is parse_int:
                    present = IntColumn(present)
            for rule, pred in col.checks:
                _note(reasons, _at(at, _failing(pred, present)), rule)
            if col.unique is not None:
                _note(reasons, _at(at, _refused_rows(col.unique.add_new_many(present))), f"{col.name}.unique")
            if col.ref is not None:  # lookups through this column reuse what it found
                got = col.ref.get_many(present)
                _note(reasons, _at(at, _refused_rows(list(map(is_not, got, repeat(None))))), f"{col.name}.references")
                if at is not None:  # back in row places, None where the value is not present
                    full: list[Any] = [None] * n
                    k = 0
                    for start, end in at:
                        full[start:end] = got[k : k + end - start]
                        k += end - start
                    got = full
                found[c] = got
        rejected = sorted(reasons.items())
        if rejected:  # the kept rows, copied a run at a time
            kept = _runs(n, reasons)
            cols = [_gather(col, kept) for col in cols]
            texts = [_gather(text, kept) if text is not None else None for text in texts]
            found = {c: _gather(got, kept) for c, got in found.items()}
        for step in self.derived:
            with_texts = getattr(step, "with_texts", None)
            if with_texts is None:
                cols.append(step(cols, found))
                texts.append(None)
            else:
                values, shown = with_texts(cols, found, texts)
                cols.append(values)
                texts.append(shown)
        return cols, rejected, texts

    def format_columns(self, cols: list[list[Any]], texts: Sequence[list[str] | None] = ()) -> list[list[str]]:
        """Canonical text of each value column; `texts` (from `apply_chunk`) stand in for the
        columns whose canonical texts came with them."""
        return [
            text if (text := texts[i] if i < len(texts) else None) is not None else fmt(col)
            for i, (fmt, col) in enumerate(zip(self.formatters, cols, strict=True))
        ]

    def lookup_codes(self, table: KeyTable, cols: list[list[Any]]) -> list[int]:
        """Per valid row, the code in `table` of what dependents of this dataset look up through its
        key (the tuple of its lookup fields): each distinct tuple is made and encoded once, not per
        row (a lookup field like a date has a handful of values in a chunk)."""
        if not self.lookup_pos:
            return [table.code(True)] * len(cols[self.key_pos])
        if len(self.lookup_pos) == 1:
            col = cols[self.lookup_pos[0]]
            return take({value: table.code((value,)) for value in set(col)}, col)
        rows = list(zip(*(cols[i] for i in self.lookup_pos), strict=True))
        return take({row: table.code(row) for row in set(rows)}, rows)


def _note(reasons: dict[int, list[str]], rows: Sequence[int], rule: str) -> None:
    for i in rows:
        reasons.setdefault(i, []).append(rule)


def _refused_rows(ok: list[bool]) -> list[int]:
    """Positions of the False entries (none: one C-level `all`)."""
    return [] if all(ok) else list(compress(range(len(ok)), map(operator.not_, ok)))


def _failing(pred: Predicate, values: list[Any]) -> list[int]:
    """Positions of the values (none null) `pred` refuses, in C-level maps (one pass of `pred`)."""
    ok = list(map(pred, values))
    return [] if all(ok) else list(compress(range(len(values)), map(operator.not_, ok)))


def _at(at: list[tuple[int, int]] | None, positions: list[int]) -> list[int]:
    """Positions among the present values (in the runs `at`; None: all rows) back to row positions."""
    if at is None or not positions:
        return positions
    rows, runs, done = [], iter(at), 0  # `done`: present values in the runs passed
    start, end = next(runs)
    for p in positions:  # ascending
        while p >= done + end - start:
            done += end - start
            start, end = next(runs)
        rows.append(start + p - done)
    return rows


def _runs(n: int, drop: Iterable[int]) -> list[tuple[int, int]]:
    """The runs `[start, end)` of range(n) that the positions in `drop` (a few) leave."""
    runs, start = [], 0
    for i in sorted(set(drop)):
        if i > start:
            runs.append((start, i))
        start = i + 1
    if start < n:
        runs.append((start, n))
    return runs


def _gather(col: list[Any], runs: list[tuple[int, int]]) -> list[Any]:
    """The rows of `col` in `runs`, copied by slices (a few memcpys, no per-value gather); a column
    of ints stays an IntColumn (its fast paths stay open)."""
    out: list[Any] = []
    for start, end in runs:
        out += col[start:end]
    return IntColumn(out) if type(col) is IntColumn else out


def _derive_step(cfg: PipelineConfig, dataset: str, spec: Derived, refs: BatchRefs, fields: list[str]) -> ColumnStep:
    """A derived field as a function of the value columns computed so far."""
    ds = cfg.datasets[dataset]
    pos = fields.index
    if spec.date_of:
        i = pos(spec.date_of)
        return lambda cols, _found: _map_present(datetime.date, cols[i])
    if spec.multiply:
        a, b = (pos(f) for f in spec.multiply)
        return _Multiply(a, b, all(cfg.field_type(dataset, f) in ("int", "decimal") for f in spec.multiply))
    if spec.lower:
        i = pos(spec.lower)
        return lambda cols, _found: _map_present(str.lower, cols[i])
    if spec.equals:
        i = pos(spec.equals.field)
        value = spec.equals.value
        if isinstance(value, str) and spec.equals.ignore_case:
            target = value.casefold()
            test: Predicate = lambda v: isinstance(v, str) and v.casefold() == target  # noqa: E731
        else:
            pred = check_predicate(Check(eq=value, ignore_case=spec.equals.ignore_case), cfg.field_type(dataset, spec.equals.field))
            test = lambda v: v is not None and pred(v)  # noqa: E731
        # a status-like field has a handful of distinct values: decide each once, then look up
        return lambda cols, _found: _map_distinct(test, cols[i])
    assert spec.lookup is not None
    via = pos(spec.lookup.via)
    target = ds.columns[spec.lookup.via].references
    assert target is not None
    slot = refs.lookup_fields[target].index(spec.lookup.field)
    table = refs.tables.get(target) or KeyTable()

    field_of = itemgetter(slot)

    def lookup(cols: list[list[Any]], found: Mapping[int, list[Any]]) -> list[Any]:
        got = found.get(via)
        if got is None:
            got = table.get_many(cols[via])
        if has_none(got):
            return [f[slot] if f is not None else None for f in got]
        return list(map(field_of, got))

    return lookup


class _Multiply:
    """`multiply: [a, b]`, a ColumnStep. `with_texts` also gives the products' canonical texts when
    it can tell them cheaply: a product by an int 1 is the other value itself (most order items have
    quantity 1, and a file without the column has it by default), so with that value's canonical
    input text at hand the row needs neither a Decimal product nor its formatting."""

    def __init__(self, a: int, b: int, numeric: bool) -> None:
        self.a, self.b, self.numeric = a, b, numeric

    def __call__(self, cols: list[list[Any]], _found: Mapping[int, list[Any]]) -> list[Any]:
        x, y = cols[self.a], cols[self.b]
        if has_none(x) or has_none(y):
            return [p * q if p is not None and q is not None else None for p, q in zip(x, y, strict=True)]
        return list(map(operator.mul, x, y))

    def with_texts(
        self, cols: list[list[Any]], found: Mapping[int, list[Any]], texts: Sequence[list[str] | None]
    ) -> tuple[list[Any], list[str] | None]:
        """(products, their canonical texts or None). `texts[i]`: column i's canonical input texts
        when it had them (a clean column: no null)."""
        if self.numeric:
            for value_pos, unit_pos in ((self.a, self.b), (self.b, self.a)):
                shown = texts[value_pos] if value_pos < len(texts) else None
                units = cols[unit_pos]
                # v * 1 is v (same digits, same exponent) unless v has more digits than the context
                # keeps, which its text's length rules out; bools never get here (numeric fields)
                if shown is None or type(units) is not IntColumn or max(map(len, shown), default=0) > getcontext().prec:
                    continue
                values = cols[value_pos]
                if units.count(1) == len(units):
                    return list(values), shown
                products = [v if q == 1 else v * q for v, q in zip(values, units, strict=True)]
                return products, [t if q == 1 else str(p) for t, q, p in zip(shown, units, products, strict=True)]
        return self(cols, found), None


def _map_present(fn: Callable[[Any], Any], col: list[Any]) -> list[Any]:
    """`fn` over a column, nulls staying null (a C-level map when there is no null)."""
    if has_none(col):
        return [fn(v) if v is not None else None for v in col]
    return list(map(fn, col))


def _map_distinct(fn: Callable[[Any], Any], col: list[Any]) -> list[Any]:
    """`fn` over a column of few distinct (hashable) values, each decided once."""
    decided = {v: fn(v) for v in set(col)}
    return take(decided, col)


def _bulk_parse(
    texts: Sequence[str], parse: Callable[[str], Any], required: bool, default: Any
) -> tuple[list[Any], list[int], list[int], list[str] | None]:
    """Parse a whole column: (values, blank positions, unparseable positions, the canonical texts of
    the values when they came cheaply, else None). A blank gets the default (None when required);
    an unparseable value is None.

    The parser's whole-column fast path takes the column, or when some text is blank or bad, the
    texts its line grammar accepts (`parse.column`, one regex pass finds the others; whatever the
    fast path still refuses, a day that does not exist, is halved down to a few texts): a chunk with
    a few bad values costs about what a clean one does. Only the rest is parsed one by one."""
    fast = getattr(parse, "bulk", None)  # a parser's whole-column fast path (see parsing.py)
    if fast is not None and parse is not parse_string and "" not in texts:
        values = fast(list(texts))  # these grammars refuse blanks: a clean column needs no strip
        if values is not None:
            return values, [], [], _canonical_texts(parse, list(texts), values)
    stripped = list(map(str.strip, texts))
    if fast is not None and "" not in stripped and (parse is parse_string or stripped != texts):
        values = fast(stripped)
        if values is not None:
            return values, [], [], _canonical_texts(parse, stripped, values)
    n = len(stripped)
    blanks = list(compress(range(n), map(operator.not_, stripped))) if "" in stripped else []
    one_by_one: list[int] | None = None  # None: every non-blank text
    values: list[Any] = [None] * n
    shown: list[str] | None = None
    got: list[Any] | None = None
    if fast is not None and len(blanks) < n:
        column = getattr(parse, "column", None)
        refused = _refused_lines(column, stripped) if column is not None else blanks
        if refused is not None and len(refused) < n:
            # the refused lines (and blanks) take a good line's place for one pass of the fast path,
            # then get their own values: no gathering of the good lines, no scattering of values
            out = set(refused)
            placeholder = stripped[next(filterfalse(out.__contains__, range(n)))]
            fixed = list(stripped)
            _scatter(fixed, refused, repeat(placeholder))
            got = fast(fixed, matched=column is not None)  # the grammar was just checked
            if got is not None:
                values = list(got)
                canonical = _canonical_texts(parse, fixed, got)
                shown = list(canonical) if canonical is not None else None
                one_by_one = [i for i in refused if stripped[i]]
            else:  # something the grammar lets through (a time its zone moves out of range): halves
                values, shown = _parse_in_parts(parse, fast, stripped, list(filterfalse(out.__contains__, range(n))), n)
                one_by_one = [i for i in range(n) if values[i] is _LEFT and stripped[i]]
    bad: list[int] = []
    for i in one_by_one if one_by_one is not None else compress(range(n), stripped):
        try:
            values[i] = parse(stripped[i])
        except (ValueError, ArithmeticError):
            values[i] = None
            bad.append(i)
            continue
        if shown is not None:
            shown[i] = format_value(values[i])
    blank_value = None if required else default
    blank_text = format_value(blank_value)
    for i in blanks:
        values[i] = blank_value
        if shown is not None:
            shown[i] = blank_text
    if shown is not None:
        for i in bad:
            shown[i] = ""
    if type(got) is IntColumn and not bad and not (blanks and type(blank_value) is not int):
        values = IntColumn(values)  # still all ints: the int fast paths stay open
    return values, blanks, bad, shown


_LEFT = object()  # a value `_parse_in_parts` left to be parsed one by one


def _parse_in_parts(
    parse: Callable[[str], Any], fast: Callable[..., list[Any] | None], texts: list[str], good: list[int], n: int
) -> tuple[list[Any], list[str] | None]:
    """The fast path over the `good` positions in parts, halving where it refuses: (values, with
    `_LEFT` where it refused down to a few texts; canonical texts, or None)."""
    values: list[Any] = [_LEFT] * n
    shown: list[str] | None = [""] * n
    for part, part_values in _bulk_parts(fast, texts, good):
        _scatter(values, part, part_values)
        canonical = _canonical_texts(parse, take(texts, part), part_values)
        if canonical is None:
            shown = None
        elif shown is not None:
            _scatter(shown, part, canonical)
    return values, shown


def _scatter(into: list[Any], at: Sequence[int], values: Sequence[Any]) -> None:
    """into[at[k]] = values[k], in C (`operator.setitem` mapped: no Python frame per value)."""
    deque(map(operator.setitem, repeat(into), at, values), 0)


def _refused_lines(column: re.Pattern[str], texts: list[str]) -> list[int] | None:
    """Positions of the texts a column grammar (a possessive repeat of one line's grammar and a line
    feed) refuses: it matches runs of good lines, each refused line is stepped over. None when a
    text holds a line feed itself (the joined column could not tell the lines apart)."""
    joined = "\n".join(texts) + "\n"
    if joined.count("\n") != len(texts):
        return None
    offsets: list[int] = []
    pos, end = 0, len(joined)
    while (pos := column.match(joined, pos).end()) < end:  # type: ignore[union-attr]
        offsets.append(pos)
        pos = joined.index("\n", pos) + 1
    lines, line, start = [], 0, 0
    for offset in offsets:  # a refused line's index: the line feeds before it (counted once over the column)
        line += joined.count("\n", start, offset)
        lines.append(line)
        start = offset
    return lines


def _bulk_parts(
    fast: Callable[..., list[Any] | None], texts: list[str], at: list[int]
) -> list[tuple[list[int], list[Any]]]:
    """`fast` over texts[at]; where it refuses, over halves, down to a few texts: the parts it took,
    with their values (the positions in no part are left to parse one by one)."""
    parts: list[tuple[list[int], list[Any]]] = []
    todo = [at] if at else []
    while todo:
        part = todo.pop()
        got = fast(take(texts, part))
        if got is not None:
            parts.append((part, got))
        elif len(part) > 8:
            todo += [part[len(part) // 2 :], part[: len(part) // 2]]
    return parts


def _canonical_texts(parse: Callable[[str], Any], clean: list[str], values: list[Any]) -> list[str] | None:
    """The canonical text of a clean column's values when its parser can tell it from the input
    texts more cheaply than formatting the values (see parsing.py), else None."""
    canonical = getattr(parse, "canonical", None)  # ints, decimals: is the input canonical already?
    if canonical is not None:
        return clean if canonical(clean, values) else None
    rewrite = getattr(parse, "canonical_texts", None)  # datetimes: rebuilt from the input
    return rewrite(clean, values) if rewrite is not None else None


def _formatter(type_name: str, nullable: bool) -> Callable[[list[Any]], list[str]]:
    """Canonical text of a value column (see parsing.format_value, which this matches)."""
    if type_name == "string":  # the values are the texts (the column is only read from here on)
        return lambda col: [v if v is not None else "" for v in col] if nullable and has_none(col) else col
    if not nullable and type_name in ("int", "decimal"):
        return lambda col: list(map(str, col))
    if type_name == "datetime":
        return lambda col: list(map(datetime.isoformat, col)) if not has_none(col) else [v.isoformat() if v is not None else "" for v in col]
    if type_name == "date":  # a few distinct days in a batch: each formatted once
        text = _Memo(date.isoformat)
        return lambda col: take(text, col)
    if type_name == "bool":
        return lambda col: take(_BOOL_TEXT, col)
    return lambda col: [str(v) if v is not None else "" for v in col] if has_none(col) else list(map(str, col))


_BOOL_TEXT = {True: "true", False: "false", None: ""}


class _Memo(dict[Any, str]):
    """value -> text, computed on first sight (None -> "")."""

    def __init__(self, fn: Callable[[Any], str]) -> None:
        super().__init__({None: ""})
        self.fn = fn

    def __missing__(self, value: Any) -> str:
        text = self[value] = self.fn(value)
        return text
