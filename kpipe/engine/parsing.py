"""Field parsers and formatters: the exact value grammar of KPI_SEMANTICS.md.

Python's own `int()`, `Decimal()` and `datetime.fromisoformat()` accept far more than the spec
(underscores, exponents, NaN, week dates, unicode digits), so each parser checks the grammar first
and only then converts. A parser raises ValueError for a value outside its grammar.

>>> parse_int("-3"), parse_decimal(".5"), format_value(parse_decimal("12.50"))
(-3, Decimal('0.5'), '12.50')
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from itertools import compress, repeat
from operator import is_
from typing import Any

from kpipe.engine.keys import IntColumn

_DECIMAL = r"[+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
DECIMAL_GRAMMAR = re.compile(_DECIMAL + r"\Z")
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?\Z"
)
# the same grammars over a whole column joined by "\n" (one regex pass instead of a call per value),
# with possessive quantifiers: what follows each repeat can never be what it repeats, so giving
# characters back could not make a match, and not keeping the states to do so is ~40% faster
_INT_COLUMN = re.compile(r"(?:[0-9]++\n)*+")  # what `_bulk_ints` reads: ASCII digits, no sign
_DECIMAL_COLUMN = re.compile(r"(?:[+-]?+(?:[0-9]++(?:\.[0-9]++)?+|\.[0-9]++)\n)*+")
_DATETIME_COLUMN = re.compile(
    r"(?:[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]++)?+(?:Z|[+-][0-9]{2}:[0-9]{2})?+\n)*+"
)
# datetimes `bulk` converts: real months and days (February 29th left out: leap years are not
# worth a regex), hours, minutes, seconds and offsets. Where a column is not all clean, the lines this
# refuses are parsed one by one, so a day that does not exist does not make `bulk` refuse the good
# ones around it.
_CALENDAR_COLUMN = re.compile(
    r"(?:(?!0000)[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]++)?+"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?+\n)*+"
)


def column_matches(column: re.Pattern[str], texts: list[str]) -> bool:
    """Does every text match the grammar `column` repeats? A value holding the separator could pass
    as two values: the count of separators rules that out."""
    if not texts:
        return True
    joined = "\n".join(texts)
    return joined.count("\n") == len(texts) - 1 and column.fullmatch(joined + "\n") is not None


def parse_int(text: str) -> int:
    digits = text[1:] if text[:1] in "+-" else text
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"not an int: {text!r}")
    return int(text)


def parse_decimal(text: str) -> Decimal:
    if DECIMAL_GRAMMAR.match(text) is None:
        raise ValueError(f"not a decimal: {text!r}")
    return Decimal(text)


def parse_string(text: str) -> str:
    return text


def _bulk_ints(texts: list[str], matched: bool = False) -> list[int] | None:
    """Digits only (no sign, no blank): the column read as one JSON array, whose C scanner converts
    a number about a quarter faster than a call of `int()` per text does. `matched`: every text is
    known to match `_INT_COLUMN`'s line grammar (each bulk path takes it: no second check)."""
    if not matched:
        joined = "".join(texts)
        # ASCII digits only; bytes.isdigit is ASCII's own test, a tenth of the cost of str.isdigit's
        # Unicode lookup per character (the larger part of this function's time before)
        if not (joined.isascii() and joined.encode("ascii").isdigit()):
            return None
    try:
        return IntColumn(_JSON.decode("[" + ",".join(texts) + "]"))
    except ValueError:  # a leading zero ("007"): not a JSON number, but int() reads it
        try:
            return _PaddedInts(map(int, texts))
        except ValueError:  # beyond int()'s 4,300 digits: value by value, where its row is rejected
            return None


class _PaddedInts(IntColumn):
    """Ints read from texts with leading zeros. A plain `IntColumn` from `_bulk_ints` was read as JSON,
    whose integers have none: its texts are canonical (`canonical_ints` need not look)."""

    __slots__ = ()


_JSON = json.JSONDecoder()


def read_ints(texts: list[str]) -> IntColumn:
    """Int texts (canonical ones, as the engine writes them) back to ints, in bulk when it can."""
    return _bulk_ints(texts) or IntColumn(map(int, texts))


def _bulk_decimals(texts: list[str], matched: bool = False) -> list[Decimal] | None:
    return list(map(Decimal, texts)) if matched or column_matches(_DECIMAL_COLUMN, texts) else None


def _bulk_strings(texts: list[str], matched: bool = False) -> list[str]:
    return texts


# A clean column whose texts are already canonical is written back as it came, not formatted again
# (str() of a million ints is a measurable part of validation). Each check is a pass or two over
# the joined column and errs on the side of "not canonical".
_NOT_CANONICAL_INT = re.compile(r"(?:^|,)0[0-9]")  # after _bulk_ints: digits only, so a leading zero


def canonical_ints(texts: list[str], values: list[int] | None = None) -> bool:
    """Are these texts (accepted by `_bulk_ints`, which gave `values`) exactly `str(int(t))`?"""
    if type(values) is IntColumn:  # read as JSON numbers: no leading zero
        return True
    if min(texts)[0] != "0":  # digits only: a leading zero anywhere would make the smallest text start with it
        return True
    return _NOT_CANONICAL_INT.search(",".join(texts)) is None


def canonical_strings(texts: list[str], values: list[str] | None = None) -> bool:
    """A clean string column's texts are its values and so their canonical text: it is written as
    it came, with no pass over it for nulls."""
    return True


def canonical_decimals(texts: list[str], values: list[Decimal] | None = None) -> bool:
    """Are these texts (accepted by `_bulk_decimals`) exactly `str(Decimal(t))`?"""
    joined = ",".join(texts)
    if "0.000000" in joined:  # maybe small enough for str() to write 1E-7
        return False
    if min(texts)[0] in "123456789":  # "+", "-", "." and "0" sort first: none of them leads here
        return True
    # a sign, a leading dot or a leading zero followed by a digit, found by substring counts (each
    # a C scan; a regex over the column was ~20 ns a character): after the grammar, a text starting
    # with "0" or "-0" is that alone, or it goes on with "." or with a digit (not canonical)
    edged = ",," + ",,".join(texts) + ",,"  # doubled: a ",0," of one value never shares a comma with the next
    if ",+" in edged or ",." in edged or ",-." in edged:
        return False
    for zero in (",0", ",-0"):
        if (n := edged.count(zero)) and n != edged.count(zero + ".") + edged.count(zero + ","):
            return False
    return True


# Each parser's `bulk`: a whole column of non-empty stripped texts in C-level maps, or None when the
# column is not all clean (the caller then parses value by value and finds the bad ones).
parse_int.bulk = _bulk_ints  # type: ignore[attr-defined]
parse_decimal.bulk = _bulk_decimals  # type: ignore[attr-defined]
# each fast path's line grammar repeated over a column joined by "\n": where a column is not all
# clean, `rules._bulk_parse` finds the lines it refuses in one pass and sends the rest through `bulk`
parse_int.column = _INT_COLUMN  # type: ignore[attr-defined]
parse_decimal.column = _DECIMAL_COLUMN  # type: ignore[attr-defined]
parse_string.bulk = _bulk_strings  # type: ignore[attr-defined]
parse_int.canonical = canonical_ints  # type: ignore[attr-defined]
parse_decimal.canonical = canonical_decimals  # type: ignore[attr-defined]
parse_string.canonical = canonical_strings  # type: ignore[attr-defined]


def datetime_parser(tz: tzinfo) -> Callable[[str], datetime]:
    """A parser giving aware datetimes in the pipeline's zone (naive input is taken to be in it)."""
    offsets: dict[str, tzinfo] = {"Z": UTC}

    def parse(text: str) -> datetime:
        m = _DATETIME.match(text)
        if m is None:
            raise ValueError(f"not an ISO 8601 datetime: {text!r}")
        y, mo, d, h, mi, s, frac, off = m.groups()
        micro = int((frac + "000000")[:6]) if frac else 0
        zone = tz if off is None else (offsets.get(off) or offsets.setdefault(off, _offset(off)))
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, tzinfo=zone)  # ValueError if impossible
        return dt if zone is tz else dt.astimezone(tz)

    utc_zone = _is_utc(tz)

    def utc_iso(texts: list[str]) -> list[str]:
        """In a UTC pipeline, the `isoformat()` texts of a column accepted by the grammar.

        A whole-second time, naive or with Z (19 or 20 characters, by the grammar: a fraction or an
        offset makes it longer), is the usual export: all of those are made by a few whole-column
        string operations (by the grammar the only space is the separator and the only Z the suffix),
        and so is a naive time with six non-zero fraction digits. The others (an offset, another
        fraction) are parsed and formatted one by one; fromisoformat raises ValueError for what it
        cannot read."""
        joined = "\n".join(texts).replace(" ", "T").replace("Z", "")
        iso = (joined.replace("\n", "+00:00\n") + "+00:00").split("\n")
        for i in compress(range(len(texts)), map((20).__lt__, map(len, texts))):
            text = texts[i]
            if len(text) == 26 and text[-1] != "Z" and not text.endswith("000000"):
                continue  # naive with microseconds (by the grammar): isoformat writes them as they are
            value = datetime.fromisoformat(text if text[-1] == "Z" or text[-6] in "+-" else text + "+00:00")
            iso[i] = (value if value.tzinfo is UTC else value.astimezone(UTC)).isoformat()
        return iso

    def bulk(texts: list[str], matched: bool = False) -> list[datetime] | None:
        """A clean column in C-level maps; None sends the caller to `parse` value by value. In a UTC
        pipeline the values are read from their ISO texts (`utc_iso`, each with "+00:00", so
        fromisoformat gives them in UTC), which come along for `canonical_texts`. `matched`: the
        texts are known to match `_CALENDAR_COLUMN`'s lines (a stricter grammar: no second check)."""
        if not matched and not column_matches(_DATETIME_COLUMN, texts):
            return None
        try:
            if utc_zone:
                iso = utc_iso(texts) if texts else []
                return _IsoDatetimes(map(datetime.fromisoformat, iso), iso)
            parsed = list(map(datetime.fromisoformat, texts))
            return [d.replace(tzinfo=tz) if d.tzinfo is None else d.astimezone(tz) for d in parsed]
        except (ValueError, ArithmeticError):  # a day that does not exist; a time moved out of range by its zone
            return None

    def canonical_texts(texts: list[str], values: list[datetime]) -> list[str]:
        """`isoformat()` of each value (parsed from `texts` by `bulk`): in a UTC pipeline the texts
        `bulk` read them from (isoformat costs ~0.5 us a value, `utc_iso` a fifth of that for the usual
        export)."""
        iso = getattr(values, "iso", None)
        return iso if iso is not None else list(map(datetime.isoformat, values))

    parse.bulk = bulk  # type: ignore[attr-defined]
    parse.column = _CALENDAR_COLUMN  # type: ignore[attr-defined]
    parse.canonical_texts = canonical_texts  # type: ignore[attr-defined]
    return parse


class _IsoDatetimes(list[datetime]):
    """Datetimes with the `isoformat()` texts they were read from (`iso`), so they are not formatted
    again when written."""

    __slots__ = ("iso",)

    def __init__(self, values: Iterable[datetime], iso: list[str]) -> None:
        super().__init__(values)
        self.iso = iso


_NULL_FREE = {IntColumn, _IsoDatetimes}


def _is_utc(tz: tzinfo) -> bool:
    """A zone that is UTC at every instant (its aware values then carry `datetime.UTC`, same text)."""
    return tz is UTC or getattr(tz, "key", None) in _UTC_KEYS


_UTC_KEYS = {"UTC", "Etc/UTC", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu", "GMT", "Etc/GMT", "Etc/GMT0", "GMT0"}


def _offset(text: str) -> tzinfo:
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError(f"bad UTC offset {text!r}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def format_value(value: Any) -> str:
    """The canonical text of a typed value in validated and processed files."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def has_none(values: list[Any]) -> bool:
    """`None in values` without equality tests: comparing a Decimal with None goes through an ABC
    isinstance check in `_decimal`, which made `None in column` a hot spot on money columns. A column
    the whole-column readers made (ints, datetimes) holds no null: not scanned."""
    if type(values) in _NULL_FREE:
        return False
    return any(map(is_, values, repeat(None)))


def reader_for(type_name: str) -> Callable[[str], Any]:
    """How the transform reads a canonical text back into a typed value."""
    if type_name == "int":
        return int
    if type_name == "decimal":
        return Decimal
    if type_name == "bool":
        return read_bool
    return str  # string, date (kept as YYYY-MM-DD text), datetime (ISO text)


def read_bool(text: str) -> bool:
    return text == "true"
