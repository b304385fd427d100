"""The index keeper: updates applied in a keeper process give the same index files as in process,
and a keeper that fails says why instead of leaving a half-updated index behind."""

from __future__ import annotations

from array import array
from pathlib import Path

import pytest

from kpipe.engine.index_keeper import IndexKeeper, Put
from kpipe.engine.keys import KeyTable


def _indexes() -> dict[str, KeyTable]:
    orders = KeyTable()
    orders.put_many([1, 2, 3], [(1, "2025-03-01")] * 3)  # an earlier batch's keys
    return {"orders": orders, "order_items": KeyTable()}


def _updates(indexes: dict[str, KeyTable]) -> list[dict[str, list[Put]]]:
    """Two dates' updates as date workers send them: new keys packed with their bounds, keys some of
    which the index holds already as a plain list."""
    march_2 = {name: index.code((2, "2025-03-02")) for name, index in indexes.items()}
    march_3 = {name: index.code((2, "2025-03-03")) for name, index in indexes.items()}
    return [
        {"orders": [(march_2["orders"], array("I", [4, 5]), True, (4, 5))], "order_items": [(march_2["order_items"], array("I", [10, 11, 12]), True, (10, 12))]},
        {"orders": [(march_3["orders"], [2, "x-7"], False, None)], "order_items": [(march_3["order_items"], array("q", [2**40]), True, (2**40, 2**40))]},
    ]


@pytest.mark.parametrize("separate", [False, True])
def test_the_keeper_saves_what_the_updates_make(tmp_path: Path, separate: bool) -> None:
    indexes = _indexes()
    updates = _updates(indexes)
    paths = {name: tmp_path / f"{name}.idx" for name in indexes}
    with IndexKeeper(indexes, separate) as keeper:
        for puts in updates:
            keeper.apply(puts)
        keeper.save(paths)
    orders, items = KeyTable.load(paths["orders"]), KeyTable.load(paths["order_items"])
    assert orders.get_many([1, 2, 3, 4, 5, "x-7"]) == [
        (1, "2025-03-01"),
        (2, "2025-03-03"),
        (1, "2025-03-01"),
        (2, "2025-03-02"),
        (2, "2025-03-02"),
        (2, "2025-03-03"),
    ]
    assert len(orders) == 6 and len(items) == 4 and items.get(2**40) == (2, "2025-03-03")
    assert len(indexes["orders"]) == (6 if not separate else 3)  # a keeper updates its own copy


def test_both_ways_write_the_same_bytes(tmp_path: Path) -> None:
    saved = []
    for separate in (False, True):
        indexes = _indexes()
        updates = _updates(indexes)  # their codes are in the indexes before a keeper is forked
        paths = {name: tmp_path / f"{separate}-{name}.idx" for name in indexes}
        with IndexKeeper(indexes, separate) as keeper:
            for puts in updates:
                keeper.apply(puts)
            keeper.save(paths)
        saved.append([path.read_bytes() for path in paths.values()])
    assert saved[0] == saved[1]


def test_a_failing_keeper_says_why(tmp_path: Path) -> None:
    indexes = _indexes()
    with IndexKeeper(indexes, separate=True) as keeper:
        keeper.apply({"customers": [(1, [1], True, (1, 1))]})  # no such index: the keeper fails on it
        with pytest.raises(RuntimeError, match=r"index keeper(?s:.*)KeyError: 'customers'"):
            for puts in _updates(indexes):
                keeper.apply(puts)
            keeper.save({name: tmp_path / f"{name}.idx" for name in indexes})
    assert not list(tmp_path.iterdir())  # nothing saved


def test_a_keeper_left_running_is_stopped(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the date workers failed"), IndexKeeper(_indexes(), separate=True) as keeper:
        raise ValueError("the date workers failed")
    assert keeper._process is not None and not keeper._process.is_alive()
