"""The KPI tables' JSON text: the fast writer gives exactly what `json.dumps(indent=1, sort_keys=True)` gives."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kpipe.tables import dump_items

_SCALARS = st.one_of(st.text(), st.integers(), st.floats(), st.booleans(), st.none())
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=2), st.dictionaries(st.text(max_size=3), _SCALARS, max_size=2))


@given(st.lists(st.dictionaries(st.text(max_size=8), _VALUES, max_size=6), max_size=5))
def test_dump_items_is_json_dumps_with_an_indent(rows: list[dict[str, Any]]) -> None:
    assert dump_items(rows) == json.dumps(rows, indent=1, sort_keys=True)


def test_a_kpi_item_is_written_flat_and_sorted() -> None:
    rows = [{"order_date": "2025-03-01", "total_orders": 3, "return_rate": 0.3333, "category": "Tops & Tees, \u00e9"}]
    assert dump_items(rows) == (
        '[\n {\n  "category": "Tops & Tees, \\u00e9",\n  "order_date": "2025-03-01",\n'
        '  "return_rate": 0.3333,\n  "total_orders": 3\n }\n]'
    )
