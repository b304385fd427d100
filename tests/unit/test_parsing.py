"""The value grammar of KPI_SEMANTICS.md ("Field parsing"), parser by parser."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpipe.engine.parsing import (
    _bulk_ints,
    canonical_decimals,
    canonical_ints,
    datetime_parser,
    format_value,
    parse_decimal,
    parse_int,
    reader_for,
)

UTC_PARSE = datetime_parser(ZoneInfo("UTC"))


# ------------------------------------------------------------------------------------------------ int


@pytest.mark.parametrize(("text", "value"), [("12", 12), ("-3", -3), ("+3", 3), ("0", 0), ("007", 7),
                                             ("123456789012345678901234567890", 123456789012345678901234567890)])
def test_int_accepts_sign_and_digits(text: str, value: int) -> None:
    assert parse_int(text) == value
    assert type(parse_int(text)) is int


@pytest.mark.parametrize("text", [
    "12.0", "1e3", "x5", "5x", "", "+", "-", "+-3", "--3", "1_000", "1 000", "1,000", "0x10", ".5", "12.",
    "\u0661\u0662",  # Arabic-Indic digits: str.isdigit() says yes, the spec says ASCII digits only
    "\uff11\uff12",  # fullwidth digits
    "\u00b2",  # superscript two
    "NaN", "inf", "-inf", "Infinity",
])
def test_int_rejects_everything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_int(text)


# ------------------------------------------------------------------------------------------------ decimal


@pytest.mark.parametrize(("text", "value"), [
    ("12", "12"), ("12.5", "12.5"), (".5", "0.5"), ("-3.25", "-3.25"), ("+3", "3"), ("0.10", "0.10"),
    ("-.5", "-0.5"), ("0", "0"), ("12345678901234567890.123456789", "12345678901234567890.123456789"),
])
def test_decimal_accepts_sign_digits_fraction(text: str, value: str) -> None:
    parsed = parse_decimal(text)
    assert isinstance(parsed, Decimal)
    assert parsed == Decimal(value)


def test_decimal_keeps_the_exact_value_not_a_binary_float() -> None:
    assert parse_decimal("0.1") + parse_decimal("0.2") == Decimal("0.3")
    assert str(parse_decimal("12.50")) == "12.50"


@pytest.mark.parametrize("text", [
    "12.", ".", "", "+", "1e3", "1E3", "1.5e-2", "NaN", "nan", "sNaN", "inf", "-inf", "Infinity", "-Infinity",
    "1_000", "1_000.5", "\u0661\u0662", "\u0661.\u0665", "1,5", "1.2.3", "x5", "5x", "--1", "+-1", "0x1A",
    "12 .5", "$12",
])
def test_decimal_rejects_exponent_nan_inf_and_junk(text: str) -> None:
    with pytest.raises(ValueError):
        parse_decimal(text)


# ------------------------------------------------------------------------------------------------ datetime


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-03-30T16:14:26", utc(2025, 3, 30, 16, 14, 26)),
    ("2025-03-30 16:14:26", utc(2025, 3, 30, 16, 14, 26)),
    ("2025-03-30T16:14:26Z", utc(2025, 3, 30, 16, 14, 26)),
    ("2025-03-30T16:14:26.5", utc(2025, 3, 30, 16, 14, 26, 500000)),
    ("2025-03-30T16:14:26.123456", utc(2025, 3, 30, 16, 14, 26, 123456)),
    ("2025-03-30T16:14:26.123456789Z", utc(2025, 3, 30, 16, 14, 26, 123456)),  # beyond microseconds: truncated
    ("2025-03-30T16:14:26+00:00", utc(2025, 3, 30, 16, 14, 26)),
    ("2025-03-30T16:14:26+05:30", utc(2025, 3, 30, 10, 44, 26)),
    ("2025-03-30T16:14:26.25-02:00", utc(2025, 3, 30, 18, 14, 26, 250000)),
    ("2024-02-29T00:00:00", utc(2024, 2, 29)),  # a leap day that exists
])
def test_datetime_iso_forms(text: str, expected: datetime) -> None:
    parsed = UTC_PARSE(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)  # converted to the pipeline's zone


def test_negative_offset_crosses_midnight_forward() -> None:
    # The worked example's order 2: 23:00 at -02:00 is 01:00 the next day in UTC.
    parsed = UTC_PARSE("2025-03-01T23:00:00-02:00")
    assert parsed == utc(2025, 3, 2, 1, 0, 0)
    assert parsed.date() == date(2025, 3, 2)


def test_positive_offset_crosses_midnight_backward() -> None:
    parsed = UTC_PARSE("2025-03-01T02:00:00+05:30")
    assert parsed == utc(2025, 2, 28, 20, 30, 0)
    assert parsed.date() == date(2025, 2, 28)


def test_offset_crossing_a_year_boundary() -> None:
    assert UTC_PARSE("2025-01-01T00:30:00+01:00").date() == date(2024, 12, 31)


@pytest.mark.parametrize("text", [
    "2025-13-45T00:00:00",  # impossible month and day
    "2025-02-29T00:00:00",  # 2025 is not a leap year
    "2025-04-31T10:00:00",
    "2025-03-01T24:00:00",
    "2025-03-01T23:60:00",
    "2025-03-01T23:59:61",
    "2025-03-01T10:00:00+24:00",  # offset hours out of range
    "2025-03-01T10:00:00+05:60",
    "2025-03-01T10:00:00+0530",  # offset must be +HH:MM
    "2025-03-01T10:00:00 UTC",
    "2025-03-01T10:00:00z",
    "2025-03-01",
    "2025-03-01T10:00",
    "2025-03-01T10:00:00.",
    "25-03-01T10:00:00",
    "2025-3-1T10:00:00",
    "03/04/2025 10:00:00",
    "2025-W09-6T10:00:00",
    "\u0662\u0660\u0662\u0665-03-01T10:00:00",  # unicode digits
    "yesterday",
    "",
])
def test_datetime_rejects_impossible_and_non_iso(text: str) -> None:
    with pytest.raises(ValueError):
        UTC_PARSE(text)


def test_naive_timestamp_is_taken_in_the_pipeline_timezone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    parse = datetime_parser(berlin)
    naive = parse("2025-03-01T23:30:00")
    assert naive.tzinfo is not None
    assert naive.utcoffset() == timedelta(hours=1)  # CET: it is local time, not UTC
    assert (naive.hour, naive.date()) == (23, date(2025, 3, 1))


def test_offset_timestamp_is_converted_into_the_pipeline_timezone() -> None:
    parse = datetime_parser(ZoneInfo("Europe/Berlin"))
    assert parse("2025-03-01T23:30:00Z").date() == date(2025, 3, 2)  # 00:30 CET
    assert parse("2025-03-01T23:30:00+01:00").date() == date(2025, 3, 1)
    assert parse("2025-07-01T22:30:00Z").date() == date(2025, 7, 2)  # CEST, +02:00 in summer
    sao_paulo = datetime_parser(ZoneInfo("America/Sao_Paulo"))
    assert sao_paulo("2025-03-02T01:00:00Z").date() == date(2025, 3, 1)  # 22:00 the day before
    assert sao_paulo("2025-03-01T23:00:00-02:00").date() == date(2025, 3, 1)
    assert sao_paulo("2025-03-01T10:00:00").date() == date(2025, 3, 1)


def test_same_instant_any_notation_same_value() -> None:
    forms = ["2025-03-01T12:00:00Z", "2025-03-01 12:00:00", "2025-03-01T13:00:00+01:00", "2025-03-01T09:00:00-03:00",
             "2025-03-01T12:00:00.000000"]
    assert {UTC_PARSE(f) for f in forms} == {utc(2025, 3, 1, 12)}


# ------------------------------------------------------------------------------------------------ canonical text


def test_format_value_canonical_text() -> None:
    assert format_value(None) == ""
    assert format_value(True) == "true"
    assert format_value(False) == "false"
    assert format_value(Decimal("12.50")) == "12.50"
    assert format_value(7) == "7"
    assert format_value(date(2025, 3, 2)) == "2025-03-02"
    assert format_value("Books, \"hardcover\"") == "Books, \"hardcover\""
    assert UTC_PARSE(format_value(UTC_PARSE("2025-03-01T23:00:00-02:00"))) == utc(2025, 3, 2, 1)


@pytest.mark.parametrize(("type_name", "value"), [
    ("int", -42), ("decimal", Decimal("49.50")), ("bool", True), ("bool", False), ("string", "Toys"),
    ("date", "2025-03-01"),
])
def test_reader_reads_back_what_format_wrote(type_name: str, value: object) -> None:
    assert reader_for(type_name)(format_value(value)) == value


@settings(max_examples=400, deadline=None)
@given(st.lists(st.from_regex(r"[+-]?(?:[0-9]{1,9}(?:\.[0-9]{1,9})?|\.[0-9]{1,9})", fullmatch=True), min_size=1, max_size=5))
def test_decimal_texts_called_canonical_are_what_str_gives_back(texts: list[str]) -> None:
    """Texts reused as validated output must be exactly what formatting the value would write; and
    short of a value small enough for str() to write an exponent, every such column is recognised."""
    canonical = [str(Decimal(t)) for t in texts] == texts
    if canonical_decimals(texts):
        assert canonical
    elif not any("0.000000" in t for t in texts):
        assert not canonical


@settings(max_examples=300, deadline=None)
@given(st.lists(st.from_regex(r"[0-9]{1,12}", fullmatch=True), min_size=1, max_size=5))
def test_int_texts_called_canonical_are_what_str_gives_back(texts: list[str]) -> None:
    """By the texts alone, and with the values the whole-column reader gave (a column it read as JSON
    is canonical without a look at the texts; one with leading zeros is not marked so)."""
    canonical = [str(int(t)) for t in texts] == texts
    assert canonical_ints(texts) == canonical
    assert canonical_ints(texts, _bulk_ints(texts)) == canonical


def test_canonical_checks_refuse_what_formatting_would_change() -> None:
    for text in ("+1.5", "01.5", "-01", ".5", "-.5", "0.0000001", "0.00000000", "00"):
        assert not canonical_decimals([text]), text
    for text in ("1.50", "-0", "-0.0", "0", "0.000001", "123456789012345678901234567890"):
        assert canonical_decimals([text]) and str(Decimal(text)) == text, text
    assert canonical_ints(["0", "10", "7"]) and not canonical_ints(["1", "007"])


DATETIME_TEXT = st.builds(
    lambda d, sep, frac, zone: d.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + frac + zone,
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31)),
    st.sampled_from([" ", "T"]),
    st.sampled_from(["", ".5", ".000000", ".123456", ".1234567"]),
    st.sampled_from(["", "", "Z", "+00:00", "+05:30", "-02:00"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(DATETIME_TEXT, min_size=1, max_size=12), st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]))
def test_datetime_canonical_texts_are_what_isoformat_gives(texts: list[str], zone: str) -> None:
    """Validated datetimes are written from their input text when that is cheaper: byte for byte the
    text `isoformat()` gives, in any zone and any accepted notation."""
    parse = datetime_parser(ZoneInfo(zone))
    values = parse.bulk(texts)  # type: ignore[attr-defined]
    assert values is not None
    assert parse.canonical_texts(texts, values) == [v.isoformat() for v in values]  # type: ignore[attr-defined]


NEAR_DECIMAL = st.text(alphabet="0123456789.+-e \n", max_size=6)
NEAR_DATETIME = st.one_of(
    DATETIME_TEXT,
    st.builds(lambda t, i, c: t[:i] + c + t[i + 1 :], DATETIME_TEXT, st.integers(0, 30), st.sampled_from(["x", "\n", "", " ", "1"])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(NEAR_DECIMAL, max_size=6), st.lists(NEAR_DATETIME, max_size=6))
def test_whole_column_grammar_checks_agree_with_value_by_value(decimals: list[str], datetimes: list[str]) -> None:
    """One regex pass over a joined column accepts exactly the columns whose every value the
    value-by-value grammar accepts (a value holding the separator included)."""
    from kpipe.engine.parsing import _DATETIME, _DATETIME_COLUMN, _DECIMAL_COLUMN, DECIMAL_GRAMMAR, column_matches

    assert column_matches(_DECIMAL_COLUMN, decimals) == all(DECIMAL_GRAMMAR.match(t) for t in decimals)
    assert column_matches(_DATETIME_COLUMN, datetimes) == all(_DATETIME.match(t) for t in datetimes)


def _one_by_one(parse: Any, texts: list[str]) -> list[Any] | None:
    """What the value-by-value parser gives for a column, or None when it refuses a value."""
    try:
        return [parse(text) for text in texts]
    except ValueError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="0123456789+- ٣", min_size=1, max_size=25), max_size=8))
def test_whole_column_ints_are_what_parse_int_gives(texts: list[str]) -> None:
    """The whole-column int reader (one JSON array) gives exactly the values and types parse_int
    gives, leading zeros and 20-digit ids included, or declines a column parse_int would not read."""
    values = parse_int.bulk(texts)  # type: ignore[attr-defined]
    expected = _one_by_one(parse_int, texts)
    if values is not None:
        assert expected is not None and values == expected and all(type(v) is int for v in values)
    elif expected is not None:
        assert not texts or any(not t.isdigit() for t in texts)  # signs are left to the value-by-value path


@settings(max_examples=300, deadline=None)
@given(st.lists(NEAR_DATETIME, min_size=1, max_size=8), st.sampled_from(["UTC", "Etc/UTC", "Europe/Berlin"]))
def test_whole_column_datetimes_are_what_parse_gives(texts: list[str], zone: str) -> None:
    """The whole-column datetime reader (whatever fast path it takes) gives exactly the values parse
    gives one by one, zone included, or declines a column parse would refuse somewhere."""
    parse = datetime_parser(ZoneInfo(zone))
    values = parse.bulk(texts)  # type: ignore[attr-defined]
    expected = _one_by_one(parse, texts)
    if values is not None:
        assert expected is not None
        assert [(v, v.utcoffset(), v.isoformat()) for v in values] == [(v, v.utcoffset(), v.isoformat()) for v in expected]


WHOLE_SECOND_TEXT = st.builds(
    lambda d, sep, zone: d.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + zone,
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31)),
    st.sampled_from([" ", "T"]),
    st.sampled_from(["", "Z"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(WHOLE_SECOND_TEXT, min_size=1, max_size=12), st.sampled_from(["UTC", "Etc/UTC", "Europe/Berlin"]))
def test_whole_second_columns_take_the_string_path_and_agree(texts: list[str], zone: str) -> None:
    """The usual export (whole seconds, naive or Z, either separator) is read and written back by
    whole-column string operations in a UTC pipeline: same values and same texts as one by one."""
    parse = datetime_parser(ZoneInfo(zone))
    values = parse.bulk(texts)  # type: ignore[attr-defined]
    expected = [parse(t) for t in texts]
    assert values is not None
    assert [(v, v.utcoffset()) for v in values] == [(v, v.utcoffset()) for v in expected]
    assert parse.canonical_texts(texts, values) == [v.isoformat() for v in expected]  # type: ignore[attr-defined]


_DATETIME_PARTS = st.tuples(
    st.integers(0, 9999), st.integers(0, 19), st.integers(0, 39), st.integers(0, 29), st.integers(0, 69),
    st.integers(0, 69), st.sampled_from(["", ".5", ".123456", ".1234567"]),
    st.sampled_from(["", "Z", "+05:30", "-07:00", "+24:00", "+03:60", "-00:00"]), st.sampled_from([" ", "T"]),
)


@settings(max_examples=2000, deadline=None)
@given(_DATETIME_PARTS)
def test_the_calendar_grammar_accepts_only_what_the_fast_path_converts(parts: tuple[Any, ...]) -> None:
    """Where a datetime column is not all clean, the lines `_CALENDAR_COLUMN` accepts go through the
    whole-column fast path together: each must be one it converts (else the good ones around it are
    halved until it is found, which is slow), but for a time its zone moves out of the years
    datetime holds; what the grammar refuses is parsed one by one (a refusal is never wrong). Before:
    such a time made the fast path raise OverflowError out of the validation."""
    from kpipe.engine.parsing import _CALENDAR_COLUMN, datetime_parser

    y, mo, d, h, mi, s, frac, zone, sep = parts
    text = f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{zone}"
    for tz in (UTC, ZoneInfo("Europe/Paris")):
        parse = datetime_parser(tz)
        if not _CALENDAR_COLUMN.fullmatch(text + "\n"):
            continue
        try:
            expected = parse(text)
        except (ValueError, ArithmeticError):  # moved out of range by its zone: year 1 or 9999 only
            assert y in (1, 9999) and parse.bulk([text]) is None  # type: ignore[attr-defined]
            continue
        assert parse.bulk([text]) == [expected]  # type: ignore[attr-defined]
