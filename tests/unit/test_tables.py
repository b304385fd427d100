"""The KPI tables' JSON text: the fast writer gives exactly what `json.dumps(indent=1, sort_keys=True)` gives."""

from __future__ import annotations

import json
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kpipe.tables import load_table, save_table, table_view

_SCALARS = st.one_of(st.text(), st.integers(), st.floats(), st.booleans(), st.none())
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=2), st.dictionaries(st.text(max_size=3), _SCALARS, max_size=2))


@given(st.lists(st.dictionaries(st.text(max_size=8), _VALUES, max_size=6), max_size=5))
def test_a_saved_table_is_json_dumps_with_an_indent(rows: list[dict[str, Any]]) -> None:
    """Flat items take the fast writer, others (lists, nested objects, NaN) `json` itself: same text."""
    assert _saved(rows) == json.dumps(rows, indent=1, sort_keys=True) + "\n"


def test_a_kpi_item_is_written_flat_and_sorted() -> None:
    rows = [{"order_date": "2025-03-01", "total_orders": 3, "return_rate": 0.3333, "category": "Tops & Tees, \u00e9"}]
    assert _saved(rows) == (
        '[\n {\n  "category": "Tops & Tees, \\u00e9",\n  "order_date": "2025-03-01",\n'
        '  "return_rate": 0.3333,\n  "total_orders": 3\n }\n]\n'
    )


def _saved(rows: list[dict[str, Any]]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "T.json"
        save_table(path, rows, [])  # no key: the order stays as given
        return path.read_text(encoding="utf-8")


@given(st.lists(st.fixed_dictionaries({"d": st.sampled_from(["2025-03-02", "2025-03-01"]), "v": _SCALARS}), max_size=2100))
def test_save_table_writes_sorted_items_as_json_would(rows: list[dict[str, Any]]) -> None:
    """Slices of items written one after another give the text of one `json.dumps` (and the
    fallback for what is not flat, such as a NaN, the same)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "T.json"
        save_table(path, rows, ["d"])
        expected = sorted(rows, key=lambda r: r["d"])
        assert path.read_text(encoding="utf-8") == json.dumps(expected, indent=1, sort_keys=True) + "\n"


def test_save_table_over_several_slices(tmp_path: Path) -> None:
    rows = [{"d": f"2025-{i % 12 + 1:02d}-01", "v": Decimal(i) / 8, "n": i} for i in range(2500)]
    save_table(tmp_path / "T.json", rows, ["d", "n"])
    expected = sorted(({**r, "v": float(r["v"]) if r["v"] % 1 else int(r["v"])} for r in rows), key=lambda r: (r["d"], str(r["n"])))
    assert (tmp_path / "T.json").read_text(encoding="utf-8") == json.dumps(expected, indent=1, sort_keys=True) + "\n"


@given(st.lists(st.fixed_dictionaries({"d": st.sampled_from(["a", "b"]), "v": st.decimals(allow_nan=False, allow_infinity=False, places=2)}, optional={"x": st.integers()}), max_size=12), st.integers(0, 5))
def test_table_view_counts_every_item_and_keeps_the_first(rows: list[dict[str, Any]], limit: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "T.json"
        save_table(path, rows, ["d"])
        whole = load_table(path)
        assert table_view(path, limit) == (len(whole), whole[:limit], {k for item in whole for k in item})


def test_numbers_are_written_exactly_never_through_a_float(tmp_path: Path) -> None:
    """A 32-digit revenue is legal (DECIMAL(38)); its JSON text is its decimal text, trailing zeros
    dropped as DynamoDB drops them, in the fast writer and the nested one alike."""
    big = Decimal("123456789012345678901234567890.12")
    rows = [{"order_date": "2025-03-01", "total_revenue": big, "return_rate": Decimal("0.10"), "total_orders": Decimal("40.00")}]
    text = _saved(rows)
    assert '"total_revenue": 123456789012345678901234567890.12' in text and '"return_rate": 0.1,' in text
    assert '"total_orders": 40,' in text
    assert load_table_text(text) == [{**rows[0], "return_rate": Decimal("0.1"), "total_orders": 40}]
    nested = [{"k": "x", "parts": [big, {"v": Decimal("1E+2")}]}]
    assert json.loads(_saved(nested), parse_float=Decimal) == [{"k": "x", "parts": [big, {"v": 100}]}]


def load_table_text(text: str) -> list[dict[str, Any]]:
    return json.loads(text, parse_float=Decimal)
