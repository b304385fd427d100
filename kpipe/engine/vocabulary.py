"""The vocabulary of pipeline.yaml, defined once: column types, checks, derived-field kinds, metric kinds.

Each term is one declaration holding its YAML shape (the config model and `pipeline.schema.json` are
built from it), a one-line meaning (the reference in `docs/pipeline-reference.md` is generated from
it), its Python implementation (what the petl executor calls inside `convert`, `select` and
`aggregate`) and its DuckDB SQL (what the DuckDB executor compiles into its queries), side by side.
Adding a term is adding one entry here and its tests: the model, the schema, the docs, both
executors and the equivalence property test pick it up.

This module imports neither petl nor DuckDB (the Lambda loads the config model from it), and nothing
in it evaluates configuration: operands become typed Python values and quoted SQL literals.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any, Literal
from zoneinfo import ZoneInfo

from kpipe.engine.patterns import Pattern

Scalar = str | int | Decimal | bool
# What "stripped" means, the same set for both executors (Python's str.strip() would take Unicode
# spaces that DuckDB's trim() keeps).
WHITESPACE = " \t\r\n\f\v"
# Python's arithmetic context for exact decimals: wider than any sum of 38-digit values can need.
EXACT_DIGITS = 120
INT64 = (-(2**63), 2**63 - 1)


def sql_text(value: str) -> str:
    """A SQL string literal (quotes doubled): operands reach SQL as data, never as code."""
    return "'" + value.replace("'", "''") + "'"


def strip(text: str | None) -> str | None:
    """A field as the rules see it: stripped, and null when nothing is left."""
    if text is None:
        return None
    text = text.strip(WHITESPACE)
    return text or None


# ------------------------------------------------------------------------------------------- column types


@dataclass(frozen=True)
class TypeTerm:
    """A column type: the grammar of its text, how a text that matches becomes a value (None: out of
    range, its own reason), and the same two steps in SQL over a stripped VARCHAR expression."""

    name: str
    meaning: str
    grammar: str | None  # a regular expression the whole stripped text must match (None: any text)
    sql_type: Callable[[int], str]  # the DuckDB type, given the column's decimal scale
    parse: Callable[[str, ZoneInfo, int], Any]  # text matching the grammar -> value; None: out of range (ValueError: no such value)
    sql_parse: Callable[[str, int], str]  # SQL of the same, NULL when `parse` would not give a value ...
    sql_null_reason: str = "range"  # ... which is this reason

    def compiled(self) -> re.Pattern[str] | None:
        return re.compile(self.grammar) if self.grammar is not None else None


def _parse_int(text: str, _tz: ZoneInfo, _scale: int) -> int | None:
    value = int(text)
    return value if INT64[0] <= value <= INT64[1] else None


def _decimal_fits(text: str, scale: int) -> bool:
    whole, _, frac = text.lstrip("+-").partition(".")
    return len(frac) <= scale and len(whole.lstrip("0")) <= 38 - scale


def _parse_decimal(text: str, _tz: ZoneInfo, scale: int) -> Decimal | None:
    if not _decimal_fits(text, scale):
        return None
    with localcontext(prec=EXACT_DIGITS):
        return Decimal(text).quantize(Decimal(1).scaleb(-scale))


_DT = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2})?"
)


def _parse_datetime(text: str, tz: ZoneInfo, _scale: int) -> datetime | None:
    """The instant a text names, as an aware datetime in UTC (so that instants compare as instants,
    whatever their wall time); raises ValueError for a day that does not exist, or an instant outside
    the years 1-9999 in UTC or in the pipeline's zone. A naive text is a wall time in that zone; one
    it repeats (clocks turned back) is the later instant, one it skips is read with the offset before
    the change, as DuckDB (ICU) reads them."""
    m = _DT.fullmatch(text)
    assert m is not None  # the grammar matched
    y, mo, d, h, mi, s, frac, off = m.groups()
    naive = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int((frac or "0")[:6].ljust(6, "0")))
    try:
        if off is None:
            early, late = naive.replace(tzinfo=tz), naive.replace(tzinfo=tz, fold=1)
            repeated = early.utcoffset() != late.utcoffset() and late.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive
            aware = late if repeated else early
        else:
            sign = -1 if off[0] == "-" else 1
            offset = timedelta(0) if off == "Z" else sign * timedelta(hours=int(off[1:3]), minutes=int(off[4:6]))
            aware = naive.replace(tzinfo=timezone(offset))
        instant = aware.astimezone(UTC)
        instant.astimezone(tz)  # its wall time in the pipeline's zone exists too
    except OverflowError as exc:
        raise ValueError(f"{text} is outside the years 1-9999") from exc
    return instant


def _sql_datetime(x: str, _scale: int) -> str:
    """`_parse_datetime` in SQL: the fraction cut to microseconds first, as Python reads it (DuckDB
    would round); a text in the first or last year is also checked to name an instant within the
    years 1-9999 in UTC and in the session's zone (any other year is, whatever its offset)."""
    cut = f"CASE WHEN length({x}) > 26 THEN regexp_replace({x}, '(\\.[0-9]{{6}})[0-9]+', '\\1') ELSE {x} END"
    ts = f"TRY_CAST({cut} AS TIMESTAMPTZ)"
    edge = (
        f"CASE WHEN {ts} BETWEEN TIMESTAMPTZ '0001-01-01 00:00:00+00' AND TIMESTAMPTZ '9999-12-31 23:59:59.999999+00'"
        f" AND CAST({ts} AS DATE) BETWEEN DATE '0001-01-01' AND DATE '9999-12-31' THEN {ts} END"
    )
    return f"CASE WHEN starts_with({x}, '0001') OR starts_with({x}, '9999') THEN {edge} ELSE {ts} END"


_YEAR = "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_TIME = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
DATETIME_GRAMMAR = rf"{_YEAR}-[0-9]{{2}}-[0-9]{{2}}[T ]{_TIME}(?:\.[0-9]+)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"


def _sql_decimal_fits(x: str, scale: int) -> str:
    """`_decimal_fits` in SQL (the text already matched the grammar): at most `scale` fraction digits
    and 38 in all, leading zeros aside."""
    fits = f"[+-]?0*[0-9]{{0,{38 - scale}}}(?:\\.[0-9]{{0,{scale}}})?"
    cast = f"CAST({x} AS DECIMAL(38, {scale}))"
    short = f"length({x}) <= {38 - scale}"  # (the usual value: too short to hold too many digits)
    fraction = f"(strpos({x}, '.') = 0 OR length({x}) - strpos({x}, '.') <= {scale})"
    return f"CASE WHEN {short} THEN CASE WHEN {fraction} THEN {cast} END WHEN regexp_full_match({x}, '{fits}') THEN {cast} END"


TYPES: dict[str, TypeTerm] = {
    t.name: t
    for t in (
        TypeTerm(
            "string",
            "any text, stripped of surrounding whitespace",
            None,
            lambda _s: "VARCHAR",
            lambda text, _tz, _s: text,
            lambda x, _s: x,
        ),
        TypeTerm(
            "int",
            "optional sign and ASCII digits (`12`, `-3`), a 64-bit integer; `12.0`, `1e3` are not ints",
            r"[+-]?[0-9]+",
            lambda _s: "BIGINT",
            _parse_int,
            lambda x, _s: f"TRY_CAST({x} AS BIGINT)",
        ),
        TypeTerm(
            "decimal",
            "optional sign, digits, optional fraction (`12`, `12.5`, `.5`), exact; no exponent, NaN or inf; "
            "at most `scale` fraction digits and 38 digits in all",
            r"[+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)",
            lambda s: f"DECIMAL(38, {s})",
            _parse_decimal,
            _sql_decimal_fits,
        ),
        TypeTerm(
            "datetime",
            "ISO 8601 `2025-03-30T16:14:26` or with a space, optional fraction, optional `Z` or `±HH:MM`; "
            "converted to the pipeline's timezone (a naive one is taken to be in it)",
            DATETIME_GRAMMAR,
            lambda _s: "TIMESTAMPTZ",
            _parse_datetime,
            _sql_datetime,
            "type",
        ),
    )
}
# Types a derived field can have beyond the column types.
FIELD_SQL_TYPES = {"date": "DATE", "bool": "BOOLEAN"}


# ------------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class CheckTerm:
    """A row check on one field's non-null value; a row failing it is rejected with `<field>.<name>`.
    Also the vocabulary of metric `where` filters. `operand(raw, field_type)` reads the YAML operand
    the way the field is read (on a string field `one_of: [1, 2]` means the texts "1" and "2"); a term
    with its own `read` reads its operand so (ValueError: refused when the config loads, saying why)."""

    name: str
    meaning: str
    shape: Any  # the YAML shape of the operand (a pydantic annotation)
    types: tuple[str, ...]  # field types it applies to
    py: Callable[[Any, Any, bool], bool]  # (value, operand, ignore_case) -> passes
    sql: Callable[[str, Any, str, bool], str]  # (expr, operand, field type, ignore_case) -> SQL boolean
    read: Callable[[Any, str], Any] | None = None  # (YAML operand, field type) -> the operand `py` and `sql` take


NUMERIC = ("int", "decimal")
EQUATABLE = ("string", "int", "decimal", "date", "bool")


def operand_value(raw: Any, field_type: str) -> Any:
    """A YAML operand as a value of the field's type."""
    if field_type == "bool":
        return raw if isinstance(raw, bool) else str(raw).strip().lower() == "true"
    if field_type in NUMERIC:
        return Decimal(str(raw))
    if field_type == "date":
        return date.fromisoformat(str(raw))
    return str(raw) if not isinstance(raw, bool) else str(raw).lower()


def sql_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, Decimal):
        return f"CAST({sql_text(str(value))} AS DECIMAL(38, {max(0, -value.as_tuple().exponent)}))"  # type: ignore[operator]
    if isinstance(value, datetime):  # before date: a datetime is a date too
        return f"TIMESTAMPTZ {sql_text(value.isoformat())}"
    if isinstance(value, date):
        return f"DATE {sql_text(value.isoformat())}"
    return sql_text(str(value))


def lower(text: str) -> str:
    """Lower case as SQL's lower() gives it: character by character, Unicode's simple case mapping
    (Python's str.lower() makes `İ` two characters and a word-final `Σ` a `ς`)."""
    return "".join(ch.lower()[0] for ch in text)


def _fold(value: Any, ignore_case: bool) -> Any:
    return lower(value) if ignore_case and isinstance(value, str) else value


def _sql_fold(expr: str, ignore_case: bool, field_type: str) -> str:
    return f"lower({expr})" if ignore_case and field_type == "string" else expr


def _compare(name: str, meaning: str, py_op: Callable[[Any, Any], bool], sql_op: str) -> CheckTerm:
    return CheckTerm(
        name,
        meaning,
        Decimal,
        NUMERIC,
        lambda v, operand, _ic: py_op(v, operand),
        lambda x, operand, _t, _ic: f"({x} {sql_op} {sql_literal(operand)})",
    )


@dataclass(frozen=True)
class Bounds:
    """A `length` operand: the fewest and the most characters (code points, as Python's `len` and
    DuckDB's `length` count them), either one unbounded when None."""

    min: int | None
    max: int | None

    def holds(self, n: int) -> bool:
        return (self.min is None or n >= self.min) and (self.max is None or n <= self.max)

    def sql(self, x: str) -> str:
        parts = ([f"length({x}) >= {int(self.min)}"] if self.min is not None else []) + (
            [f"length({x}) <= {int(self.max)}"] if self.max is not None else [])
        return "(" + " AND ".join(parts or ["TRUE"]) + ")"

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in (("min", self.min), ("max", self.max)) if v is not None)


def _bounds(raw: Any, _field_type: str) -> Bounds:
    get = raw.get if isinstance(raw, dict) else lambda k: getattr(raw, k, None)
    low, high = get("min"), get("max")
    if low is None and high is None:
        raise ValueError("neither min nor max is given; allowed: {min: N}, {max: N} or both")
    if low is not None and high is not None and low > high:
        raise ValueError(f"min {low} is above max {high}; allowed: min <= max")
    return Bounds(low, high)


CHECKS: dict[str, CheckTerm] = {
    c.name: c
    for c in (
        _compare("gt", "greater than the operand", lambda v, o: v > o, ">"),
        _compare("ge", "greater than or equal to the operand", lambda v, o: v >= o, ">="),
        _compare("lt", "less than the operand", lambda v, o: v < o, "<"),
        _compare("le", "less than or equal to the operand", lambda v, o: v <= o, "<="),
        CheckTerm(
            "eq",
            "equal to the operand (`ignore_case: true` for text)",
            Scalar,
            EQUATABLE,
            lambda v, o, ic: _fold(v, ic) == _fold(o, ic),
            lambda x, o, t, ic: f"({_sql_fold(x, ic, t)} = {sql_literal(_fold(o, ic))})",
        ),
        CheckTerm(
            "ne",
            "not equal to the operand (`ignore_case: true` for text)",
            Scalar,
            EQUATABLE,
            lambda v, o, ic: _fold(v, ic) != _fold(o, ic),
            lambda x, o, t, ic: f"({_sql_fold(x, ic, t)} <> {sql_literal(_fold(o, ic))})",
        ),
        CheckTerm(
            "between",
            "within `[low, high]`, both included",
            tuple[Decimal, Decimal],
            NUMERIC,
            lambda v, o, _ic: o[0] <= v <= o[1],
            lambda x, o, _t, _ic: f"({x} BETWEEN {sql_literal(o[0])} AND {sql_literal(o[1])})",
        ),
        CheckTerm(
            "one_of",
            "one of the listed values (`ignore_case: true` for text)",
            list[Scalar],
            EQUATABLE,
            lambda v, o, ic: _fold(v, ic) in {_fold(x, ic) for x in o},
            lambda x, o, t, ic: f"({_sql_fold(x, ic, t)} IN ({', '.join(sql_literal(_fold(v, ic)) for v in o)}))",
        ),
        CheckTerm(
            "matches",
            "the whole value matches the regular expression (Python `re` syntax without lookarounds, backreferences or "
            "inline flags; `\\d \\w \\s` are ASCII, `.` is any character but a line feed; `ignore_case: true` for text)",
            str,
            ("string",),
            lambda v, o, ic: o.fullmatch(lower(v) if ic else v, ic),
            lambda x, o, t, ic: f"regexp_full_match({_sql_fold(x, ic, t)}, {sql_text(o.re2(ic))})",
            lambda raw, _t: Pattern(raw),
        ),
        CheckTerm(
            "length",
            "the number of characters is at least `min` and at most `max` (either may be left out)",
            dict,  # {min, max}: the model gives it its own class
            ("string",),
            lambda v, o, _ic: o.holds(len(v)),
            lambda x, o, _t, _ic: o.sql(x),
            _bounds,
        ),
    )
}


def check_operand(name: str, raw: Any, field_type: str) -> Any:
    """A check's YAML operand as typed values (lists and pairs element by element; a term with its
    own `read`, as that reads it)."""
    term = CHECKS.get(name)
    if term is not None and term.read is not None:
        return term.read(raw, field_type)
    if isinstance(raw, list | tuple):
        return tuple(operand_value(v, field_type) for v in raw)
    return operand_value(raw, field_type)


# --------------------------------------------------------------------------------------------- row checks


@dataclass(frozen=True)
class RowCheckTerm:
    """A check across several columns of one row, listed in a dataset's `checks`; like every check it
    passes when a value it reads is null. `inputs(operand)` names the columns it reads, `applies(types)`
    says whether it fits their types (`allowed` says which do, in words), `rule(operand)` is the reason a
    failing row gets; `py(operand, values)` and `sql(operand, exprs, (type, scale) of each)` decide it."""

    name: str
    meaning: str
    shape: Any
    inputs: Callable[[Any], list[str]]
    applies: Callable[[Sequence[str]], bool]
    allowed: str
    rule: Callable[[Any], str]
    rule_shape: str  # the rule id as the reference shows it
    py: Callable[[Any, Sequence[Any]], bool]
    sql: Callable[[Any, Sequence[str], Sequence[tuple[str, int]]], str]


# operator -> (its name in rule ids, Python, SQL)
COMPARISONS: dict[str, tuple[str, Callable[[Any, Any], bool], str]] = {
    "<": ("lt", lambda a, b: a < b, "<"),
    "<=": ("le", lambda a, b: a <= b, "<="),
    ">": ("gt", lambda a, b: a > b, ">"),
    ">=": ("ge", lambda a, b: a >= b, ">="),
    "==": ("eq", lambda a, b: a == b, "="),
    "!=": ("ne", lambda a, b: a != b, "<>"),
}
Operator = Literal["<", "<=", ">", ">=", "==", "!="]


def _comparable(types: Sequence[str]) -> bool:
    a, b = types
    return (a in NUMERIC and b in NUMERIC) or (a == b and a in ("string", "datetime", "date"))


def _sql_compare(spec: Any, x: Sequence[str], types: Sequence[tuple[str, int]]) -> str:
    """`a op b` in SQL, exact for numbers of other types or scales (DuckDB would cast both to one
    DECIMAL(38, s), which a large value of the smaller scale overflows): an int is a decimal of the
    other's scale (19 digits fit beside 18 fraction digits); decimals of two scales compare their whole
    parts, then, when those are equal, their fractions."""
    (a, b), ((ta, sa), (tb, sb)) = x, types
    op = COMPARISONS[spec[1]][2]
    if ta in NUMERIC and tb in NUMERIC and (ta, sa) != (tb, sb):
        if "int" in (ta, tb) or sa == sb:
            wide = f"DECIMAL(38, {max(sa, sb)})"
            return f"(CAST({a} AS {wide}) {op} CAST({b} AS {wide}))"
        whole_a, whole_b = (f"CAST(trunc({v}) AS DECIMAL(38, 0))" for v in (a, b))
        frac_a, frac_b = (f"CAST({v} - trunc({v}) AS DECIMAL(38, {max(sa, sb)}))" for v in (a, b))
        return f"(CASE WHEN {whole_a} <> {whole_b} THEN {whole_a} {op} {whole_b} ELSE {frac_a} {op} {frac_b} END)"
    return f"({a} {op} {b})"


ROW_CHECKS: dict[str, RowCheckTerm] = {
    r.name: r
    for r in (
        RowCheckTerm(
            "compare",
            "`[left, op, right]`: the row's two values compare so; `op` is one of `<` `<=` `>` `>=` `==` `!=` (quote it in YAML); "
            "numbers compare exactly, datetimes as instants, texts by code point",
            tuple[str, Operator, str],
            lambda spec: [spec[0], spec[2]],
            _comparable,
            "two numeric columns, two datetime columns or two string columns",
            lambda spec: f"compare.{spec[0]}_{COMPARISONS[spec[1]][0]}_{spec[2]}",
            "compare.<left>_<lt|le|gt|ge|eq|ne>_<right>",
            lambda spec, v: COMPARISONS[spec[1]][1](v[0], v[1]),
            _sql_compare,
        ),
    )
}


# ----------------------------------------------------------------------------------------- derived fields


@dataclass(frozen=True)
class DerivedTerm:
    """A derived field, computed after a row's columns passed their rules. `inputs(spec)` names the
    fields it reads (a lookup reads its `via` column); `py(spec, values, tz)` computes it from those
    values (None in, None out); `sql(spec, exprs)` is the same over SQL expressions of those inputs.
    A lookup's value comes from the referenced dataset's valid row, so both executors join for it:
    its `py` and `sql` take the looked-up value itself."""

    name: str
    meaning: str
    shape: Any
    inputs: Callable[[Any], list[str]]
    result: Callable[[Any, Sequence[str]], str]  # (spec, input types) -> the field's type
    py: Callable[[Any, Sequence[Any], ZoneInfo], Any]
    sql: Callable[[Any, Sequence[str]], str]
    input_types: tuple[tuple[str, ...], ...] = ()  # allowed types per input, () = any


def _multiply(spec: Any, values: Sequence[Any], _tz: ZoneInfo) -> Any:
    a, b = values
    if a is None or b is None:
        return None
    with localcontext(prec=EXACT_DIGITS):
        return a * b


def _equals(spec: Any, values: Sequence[Any], _tz: ZoneInfo) -> bool:
    (v,) = values
    return v is not None and _fold(v, spec.ignore_case) == _fold(spec.value, spec.ignore_case)


GRAINS = ("day", "week", "month")


def grain_of(spec: Any) -> str:
    """A `date_of`'s grain: `{date_of: created_at}` is a day, `{date_of: {field, grain}}` says it."""
    return "day" if isinstance(spec, str) else str(getattr(spec, "grain", None) or "day")


def _date_of_field(spec: Any) -> str:
    return spec if isinstance(spec, str) else spec.field


def _date_of(spec: Any, values: Sequence[Any], tz: ZoneInfo) -> date | str | None:
    """The day of a datetime in the zone; of the week, its ISO week's Monday; of the month, `YYYY-MM`."""
    (v,) = values
    if v is None:
        return None
    day = v.astimezone(tz).date()
    grain = grain_of(spec)
    if grain == "week":
        return day - timedelta(days=day.weekday())
    return f"{day.year:04d}-{day.month:02d}" if grain == "month" else day


def _sql_date_of(spec: Any, x: Sequence[str]) -> str:
    day = f"CAST({x[0]} AS DATE)"  # in the session's zone, the pipeline's
    grain = grain_of(spec)
    if grain == "week":
        return f"CAST(date_trunc('week', {day}) AS DATE)"  # DuckDB's week is the ISO week, from Monday
    return f"strftime({day}, '%Y-%m')" if grain == "month" else day


def _product_type(types: Sequence[str]) -> str:
    return "int" if all(t == "int" for t in types) else "decimal"


DERIVED: dict[str, DerivedTerm] = {
    d.name: d
    for d in (
        DerivedTerm(
            "date_of",
            "the calendar date of a datetime, in the pipeline's timezone; with `grain: week` the Monday of its ISO week "
            "(a date), with `grain: month` the text `YYYY-MM`",
            str | dict,  # a field, or {field, grain}: the model gives the mapping its own class
            lambda spec: [_date_of_field(spec)],
            lambda spec, _t: "string" if grain_of(spec) == "month" else "date",
            _date_of,
            _sql_date_of,
            (("datetime",),),
        ),
        DerivedTerm(
            "multiply",
            "the exact product of two numeric fields",
            tuple[str, str],
            lambda spec: list(spec),
            lambda _spec, types: _product_type(types),
            _multiply,
            lambda _spec, x: f"({x[0]} * {x[1]})",
            (NUMERIC, NUMERIC),
        ),
        DerivedTerm(
            "lower",
            "a text field in lower case",
            str,
            lambda spec: [spec],
            lambda _spec, _t: "string",
            lambda _spec, v, _tz: lower(v[0]) if v[0] is not None else None,
            lambda _spec, x: f"lower({x[0]})",
            (("string",),),
        ),
        DerivedTerm(
            "equals",
            "true when a field equals a value (`ignore_case: true` for text), false otherwise or when null",
            dict,  # {field, value, ignore_case}: the model gives it its own class
            lambda spec: [spec.field],
            lambda _spec, _t: "bool",
            _equals,
            lambda spec, x: f"coalesce({_sql_fold(x[0], spec.ignore_case, 'string' if isinstance(spec.value, str) else '')}"
            f" = {sql_literal(_fold(spec.value, spec.ignore_case))}, FALSE)",
        ),
        DerivedTerm(
            "lookup",
            "a field of the row another dataset's key names (`via`: a column with `references`)",
            dict,  # {via, field}
            lambda spec: [spec.via],
            lambda _spec, types: types[0],  # the looked-up field's type, given by the caller
            lambda _spec, v, _tz: v[0],
            lambda _spec, x: x[0],
        ),
    )
}


# -------------------------------------------------------------------------------------------- metric kinds


@dataclass(frozen=True)
class MetricTerm:
    """A metric kind. An aggregate reads one field of its `from` dataset's rows in the group (after
    `where`): `py` over the non-null values; `sql` the SQL aggregates over the field's expression and
    `finish` the value from their results (exact, in Python, where SQL would give a double); `empty`
    when the group has no such value. A combining kind (`ratio`) reads other metrics of the same item instead."""

    name: str
    meaning: str
    shape: Any
    py: Callable[[list[Any]], Any]
    sql: Callable[[str], list[str]]  # the aggregates SQL computes per group ...
    empty: Any = None
    combines: bool = False
    types: tuple[str, ...] = ()  # field types it reads, () = any
    finish: Callable[[list[Any]], Any] = lambda parts: parts[0]  # ... and what the item holds, from them


def _exact_sum(values: list[Any]) -> Any:
    with localcontext(prec=EXACT_DIGITS):
        return sum(values, start=0)


def _ratio(pair: list[Any]) -> Decimal:
    num, den = pair
    if not den:
        return Decimal(0)
    with localcontext(prec=EXACT_DIGITS):
        return Decimal(num) / Decimal(den)


def _avg_of(total: Any, count: int) -> Decimal | None:
    if not count:
        return None
    with localcontext(prec=EXACT_DIGITS):
        return Decimal(total) / count


def _avg(values: list[Any]) -> Decimal | None:
    return _avg_of(_exact_sum(values), len(values))


METRICS: dict[str, MetricTerm] = {
    m.name: m
    for m in (
        MetricTerm("sum", "the exact sum of a numeric field", str, _exact_sum, lambda x: [f"sum({x})"], 0, types=NUMERIC),
        MetricTerm("count", "the number of rows where the field is not null", str, len, lambda x: [f"count({x})"], 0),
        MetricTerm(
            "count_distinct", "the number of distinct non-null values", str, lambda v: len(set(v)), lambda x: [f"count(DISTINCT {x})"], 0
        ),
        MetricTerm("min", "the smallest value", str, min, lambda x: [f"min({x})"], types=(*NUMERIC, "date", "string")),
        MetricTerm("max", "the largest value", str, max, lambda x: [f"max({x})"], types=(*NUMERIC, "date", "string")),
        MetricTerm(
            "avg",
            "the exact mean of a numeric field (sum / count of non-null values)",
            str,
            _avg,
            lambda x: [f"sum({x})", f"count({x})"],  # divided exactly in Python: SQL's avg() is a double
            types=NUMERIC,
            finish=lambda parts: _avg_of(*parts),
        ),
        MetricTerm(
            "ratio",
            "one metric of the item divided by another (0 when the divisor is 0), from the unrounded values",
            tuple[str, str],
            _ratio,
            lambda _x: [],
            combines=True,
        ),
    )
}


# ------------------------------------------------------------------------------------ values as stored


def round_half_up(value: Any, places: int) -> Any:
    """Money and rates as stored: rounded once, half-up, from the unrounded value."""
    if value is None or isinstance(value, bool):
        return value
    with localcontext(prec=EXACT_DIGITS):
        return Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def plain_number(value: Any) -> Any:
    """An unrounded number as stored: an int stays an int; a Decimal loses trailing fraction zeros (both
    executors hold decimals at the column's scale, so `9.500000` is shown as `9.5`), never an exponent."""
    if not isinstance(value, Decimal):
        return value
    if value == value.to_integral_value():
        return int(value)
    return Decimal(format(value.normalize(), "f"))


@dataclass(frozen=True)
class Reference:
    """One row of the generated reference: which kind of term, its name, shape and meaning."""

    kind: str
    name: str
    shape: str
    meaning: str
    applies_to: str = field(default="")


def reference_rows() -> list[Reference]:
    def shape(annotation: Any, word: str = "field") -> str:  # YAML as a user writes it: `[low, high]`, `[value, ...]`
        if annotation == tuple[Decimal, Decimal]:
            return "[low, high]"
        args = [shape(a, word) for a in getattr(annotation, "__args__", ())]
        if getattr(annotation, "__origin__", None) is Literal:
            return "op"
        if getattr(annotation, "__origin__", None) in (tuple, list):
            return f"[{', '.join(args)}]" if annotation.__origin__ is tuple else f"[{args[0]}, ...]"
        if annotation != Scalar and isinstance(annotation, type(str | dict)):
            return " or ".join(args)
        return {Decimal: "number", str: word, dict: "mapping", Scalar: "value"}.get(annotation, str(annotation))

    rows = [Reference("type", t.name, "", t.meaning) for t in TYPES.values()]
    rows += [Reference("check", c.name, shape(c.shape, "text"), c.meaning, ", ".join(c.types)) for c in CHECKS.values()]
    rows += [Reference("row_check", r.name, shape(r.shape, "column"), r.meaning, r.allowed) for r in ROW_CHECKS.values()]
    rows += [Reference("derived", d.name, shape(d.shape), d.meaning) for d in DERIVED.values()]
    rows += [
        Reference("metric", m.name, shape(m.shape, "metric" if m.combines else "field"), m.meaning, ", ".join(m.types))
        for m in METRICS.values()
    ]
    return rows
