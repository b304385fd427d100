"""KeyTable: the compact key -> value map behind uniqueness, references, lookups and the store index."""

from __future__ import annotations

import sys
from array import array
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kpipe.engine import keys as keys_module
from kpipe.engine.keys import DENSE_LIMIT, IntColumn, KeyBits, KeySpan, KeyTable


def test_dense_int_keys() -> None:
    t = KeyTable()
    t.put(0, "a")
    t.put(5, "b")
    t.put(5000, "a")
    assert (t.get(0), t.get(5), t.get(5000)) == ("a", "b", "a")
    assert t.get(1) is None and t.get(1, "missing") == "missing"
    assert t.get(10**6) is None  # beyond the allocated slots
    assert 0 in t and 5 in t and 4 not in t and 10**6 not in t
    assert len(t) == 3


def test_put_replaces_without_counting_twice() -> None:
    t = KeyTable()
    t.put(3, ("1", "2025-03-01"))
    t.put(3, ("2", "2025-03-02"))
    t.put("k", 1)
    t.put("k", 2)
    assert len(t) == 2
    assert t.get(3) == ("2", "2025-03-02")
    assert t.get("k") == 2


def test_sparse_keys_negative_huge_and_strings() -> None:
    t = KeyTable()
    t.put(-1, "neg")
    t.put(DENSE_LIMIT, "edge")
    t.put(10**30, "huge")
    t.put("7", "text seven")
    t.put(7, "int seven")
    assert t.get(-1) == "neg"
    assert t.get(DENSE_LIMIT) == "edge"
    assert t.get(10**30) == "huge"
    assert t.get("7") == "text seven" and t.get(7) == "int seven"  # "7" and 7 are different keys
    assert "8" not in t and -2 not in t and DENSE_LIMIT + 1 not in t
    assert len(t) == 5


def test_add_new_is_a_uniqueness_check() -> None:
    t = KeyTable()
    assert t.add_new(1) is True
    assert t.add_new(1) is False
    assert t.add_new("x") is True
    assert t.add_new("x") is False
    assert t.add_new(-5) is True
    assert t.add_new(-5) is False
    assert len(t) == 3


def test_items_lists_every_key_once() -> None:
    t = KeyTable()
    for k, v in [(2, "a"), (0, "b"), (-3, "c"), ("s", "d"), (2, "e")]:
        t.put(k, v)
    assert sorted(t.items(), key=str) == sorted([(0, "b"), (2, "e"), (-3, "c"), ("s", "d")], key=str)


def test_save_load_round_trip(tmp_path: Path) -> None:
    t = KeyTable()
    t.put(1, (1, "2025-03-01"))
    t.put(2, (2, "2025-03-02"))
    t.put(70000, (1, "2025-03-01"))
    t.put(-4, (3, "2025-03-03"))
    t.put(10**12, ("Books",))
    t.put("sku-9", True)
    path = tmp_path / "t.idx"
    t.save(path)
    back = KeyTable.load(path)
    assert len(back) == len(t) == 6
    assert sorted(back.items(), key=str) == sorted(t.items(), key=str)
    assert back.get(1) == (1, "2025-03-01") and isinstance(back.get(1), tuple)
    assert back.get(-4) == (3, "2025-03-03")
    assert back.get(10**12) == ("Books",)
    assert back.get("sku-9") is True
    assert back.get(3) is None and "sku-8" not in back
    # A loaded table keeps working: new values and known values both encode correctly.
    back.put(3, (1, "2025-03-01"))
    back.put(4, (9, "2025-03-09"))
    assert back.get(3) == (1, "2025-03-01") and back.get(4) == (9, "2025-03-09")
    assert len(back) == 8


def test_save_load_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.idx"
    KeyTable().save(path)
    back = KeyTable.load(path)
    assert len(back) == 0 and list(back.items()) == [] and 0 not in back


def test_million_dense_keys_stay_small() -> None:
    """~4 bytes per key: a 1M-key index is a few MB, where a dict of int keys would take ~40 MB+."""
    t = KeyTable()
    n = 1_000_000
    dates = [f"2025-03-{d:02d}" for d in range(1, 29)]
    for k in range(1, n + 1):
        t.put(k, (1, dates[k % 28]))
    assert len(t) == n
    dense_bytes = sys.getsizeof(t._dense)
    assert dense_bytes < 8 * 1024 * 1024, dense_bytes  # 4 MB of slots plus growth slack
    assert t._sparse == {}  # nothing spilled into the dict
    assert len(t._values) == 29  # values are dictionary-encoded: one entry per distinct value (+ absent)
    assert t.get(n) == (1, dates[n % 28])
    assert sys.getsizeof({k: 1 for k in range(n)}) > 4 * dense_bytes  # what the array saves


def test_slots_start_at_one_byte_and_widen_when_values_need_it(tmp_path: Path) -> None:
    from kpipe.engine.keys import KeyTable as Table

    table = Table()
    table.put_many(list(range(1000)), [True] * 1000)
    assert table._dense.itemsize == 1  # a set: one byte per key
    table.put_many(list(range(300)), [f"v{i}" for i in range(300)])  # 301 distinct values: needs two bytes
    assert table._dense.itemsize == 2
    table.put_many([5], [("seq", 70_000)])
    table.put_many(list(range(2000, 2000 + 70_000)), list(range(70_000)))  # > 65,535 codes: four bytes
    assert table._dense.itemsize == 4
    assert table.get(299) == "v299" and table.get(999) is True and table.get(2000 + 69_999) == 69_999
    table.save(tmp_path / "t.idx")
    loaded = Table.load(tmp_path / "t.idx")
    assert loaded._dense.itemsize == 4 and loaded.get(299) == "v299" and len(loaded) == len(table)


KEYS = st.one_of(st.integers(-5, 3000), st.text(max_size=3))  # bools would equal 1 and 0 in the model dict


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(KEYS, max_size=40), st.sampled_from(["a", "b", ("c", 1), True])), max_size=6), st.booleans())
def test_bulk_methods_agree_with_a_dict(steps: list[tuple[list[object], object]], as_int_column: bool) -> None:
    """The column-at-a-time fast paths (all keys dense ints) and the general loop answer exactly as a
    plain dict would, whatever mix of new, repeated, negative and string keys a chunk holds, and a
    column of ints handed over as an `IntColumn` (no type scan) is answered as the same plain list."""
    table, model = KeyTable(), {}
    for i, (keys, value) in enumerate(steps):
        if as_int_column and all(type(k) is int for k in keys):
            keys = IntColumn(keys)
        assert table.get_many(keys) == [model.get(k) for k in keys]
        if i % 2:
            expected = []
            for k in keys:
                expected.append(k not in model)
                model.setdefault(k, True)
            assert table.add_new_many(keys) == expected
        else:
            table.put_many(keys, [value] * len(keys))
            model.update(dict.fromkeys(keys, value))
        assert len(table) == len(model)
        assert sorted(map(repr, table.items())) == sorted(map(repr, model.items()))


@settings(max_examples=150, deadline=None)
@given(st.lists(KEYS, max_size=30), st.lists(KEYS, max_size=30), st.sampled_from(["B", "H"]), st.sampled_from([3, 64, 1 << 18]))
def test_overlaps_and_absorb_agree_with_sets(mine: list[object], theirs: list[object], typecode: str, window: int) -> None:
    """The bitmap merge of files validated alone equals putting the other file's keys one by one,
    whatever the window of slots merged at a time."""
    with patch.object(keys_module, "_MERGE_SLOTS", window):
        _overlaps_and_absorb_agree_with_sets(mine, theirs, typecode)


def _overlaps_and_absorb_agree_with_sets(mine: list[object], theirs: list[object], typecode: str) -> None:
    a, b = KeyTable(typecode), KeyTable(typecode)
    a.put_many(mine, [True] * len(mine))
    b.put_many(theirs, [True] * len(theirs))
    assert a.overlaps(b) == a.overlaps(b.span()) == bool(set(mine) & set(theirs))
    if not a.overlaps(b):
        twin = KeyTable(typecode)
        twin.put_many(mine, [True] * len(mine))
        twin.absorb(b.span(), True)  # what a worker process hands back
        assert sorted(map(repr, twin.items())) == sorted(repr((k, True)) for k in set(mine) | set(theirs))
        a.absorb(b, True)
        assert sorted(map(repr, a.items())) == sorted(repr((k, True)) for k in set(mine) | set(theirs))
        assert len(a) == len(set(mine) | set(theirs))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(KEYS, max_size=30), min_size=1, max_size=4),
    st.lists(KEYS, max_size=30),
    st.sampled_from(["B", "H"]),
    st.sampled_from([3, 8, 64, 1 << 18]),
)
def test_key_bits_hold_what_their_tables_held(pieces: list[list[object]], probe: list[object], typecode: str, window: int) -> None:
    """The parent's set of keys seen across pieces (a bit a slot) answers `overlaps` and `common`
    as the union of the pieces' tables would, counts each key once however often it is absorbed, and
    gives that union back as a table, whatever the window."""
    with patch.object(keys_module, "_MERGE_SLOTS", window):
        bits: KeyBits = KeyBits()
        union: set[object] = set()
        for keys in pieces:
            piece = KeyTable(typecode)
            piece.put_many(keys, [True] * len(keys))
            assert bits.overlaps(piece.span()) == bool(set(keys) & union)
            assert sorted(map(repr, bits.common(piece.span()))) == sorted(map(repr, set(keys) & union))
            bits.absorb(piece.span() if len(keys) % 2 else piece, True)
            union |= set(keys)
            assert len(bits) == len(union)
        other = KeyTable(typecode)
        other.put_many(probe, [True] * len(probe))
        assert bits.overlaps(other) == bool(set(probe) & union) and len(bits) == len(union)
        table = bits.table()
        assert sorted(map(repr, table.items())) == sorted(repr((k, True)) for k in union) and len(table) == len(union)
        assert table.add_new_many(probe) == [k not in union and k not in probe[:i] for i, k in enumerate(probe)]


def test_key_bits_take_an_eighth_of_a_tables_slots() -> None:
    table, bits = KeyTable(), KeyBits()
    table.put_many(list(range(3, 1_000_003)), [True] * 1_000_000)
    bits.absorb(table.span())
    assert len(bits) == 1_000_000 and len(bits._bits) == 1_000_003 // 8 + 1
    assert bits.overlaps(KeySpan(999_999, array("B", [0, 0, 0, 1]), [None, True], {}, 1)) is True
    assert bits.overlaps(KeySpan(1_000_003, array("B", [1]), [None, True], {}, 1)) is False


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.integers(-3, 2000), st.sampled_from(["2025-03-01", ("x", 2), 7]), max_size=30),
    st.dictionaries(st.integers(-3, 2000) | st.text(max_size=2), st.sampled_from(["2025-03-02", ("x", 2), 7, 8]), max_size=30),
)
def test_absorb_keeps_the_other_tables_values(mine: dict[object, object], theirs: dict[object, object]) -> None:
    """How a worker's valid keys (each with its lookup values) join the parent's table."""
    theirs = {k: v for k, v in theirs.items() if k not in mine}
    a, b = KeyTable(), KeyTable()
    a.put_many(list(mine), list(mine.values()))
    b.put_many(list(theirs), list(theirs.values()))
    a.absorb(b)
    expected = {**mine, **theirs}
    assert a.get_many(list(expected)) == list(expected.values()) and len(a) == len(expected)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.integers(0, 3000), st.integers(0, 400).map(str), max_size=40),
    st.dictionaries(st.integers(0, 3000), st.integers(0, 400).map(str), max_size=40),
    st.sampled_from([3, 64, 1 << 18]),
)
def test_absorb_translates_wide_codes(mine: dict[int, str], theirs: dict[int, str], window: int) -> None:
    """Tables of more than 255 values (two-byte slots: dates of a batch spanning years) join window by
    window, each of the other table's codes translated to this one's."""
    theirs = {k: v for k, v in theirs.items() if k not in mine}
    a, b = KeyTable(), KeyTable()
    b.put_many([10_000 + i for i in range(300)], [f"filler {i}" for i in range(300)])  # b's codes differ from a's
    a.put_many(list(mine), list(mine.values()))
    b.put_many(list(theirs), list(theirs.values()))
    with patch.object(keys_module, "_MERGE_SLOTS", window):
        a.absorb(b)
    expected = {**mine, **theirs, **{10_000 + i: f"filler {i}" for i in range(300)}}
    assert a.get_many(list(expected)) == list(expected.values()) and len(a) == len(expected)
    assert sorted(map(repr, a.items())) == sorted(map(repr, expected.items()))


@pytest.mark.parametrize("keys", [[5], [0, 65_535], [65_536, 200_000], [131_071, 131_072], [1, 300_000]])
@pytest.mark.parametrize("typecode", ["B", "H"])
def test_span_covers_exactly_the_slots_in_use(keys: list[int], typecode: str) -> None:
    table = KeyTable(typecode)
    table.put_many(keys, [True] * len(keys))
    span = table.span()
    assert (span.start, span.start + len(span.dense)) == (min(keys), max(keys) + 1)
    assert KeyTable().overlaps(span) is False and table.overlaps(span) is True


KEY = st.one_of(st.integers(-5, 3000), st.integers(DENSE_LIMIT, DENSE_LIMIT + 2), st.text(max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.lists(KEY, max_size=40, unique=True), st.lists(KEY, max_size=40, unique=True), st.booleans())
def test_put_new_codes_and_get_many_agree_with_put_and_get(before: list[object], batch: list[object], packed: bool) -> None:
    """A batch's new keys stored with one code (as an int64 array when they fit, as the transform
    hands them over) read back exactly as key-by-key puts; get_many of keys past every slot is None."""
    from array import array

    batch = [k for k in batch if k not in before]
    fast, slow = KeyTable(), KeyTable()
    for t in (fast, slow):
        for k in before:
            t.put(k, "old")
    assert fast.get_many(batch) == [None] * len(batch)
    ints = all(type(k) is int for k in batch)
    bounds = (min(batch), max(batch)) if packed and ints and batch else None  # as the index workers send them
    fast.put_new_codes(array("q", batch) if packed and ints else batch, fast.code("new"), bounds)  # type: ignore[arg-type]
    for k in batch:
        slow.put(k, "new")
    keys = [*before, *batch]
    assert fast.get_many(keys) == slow.get_many(keys) == [*(["old"] * len(before)), *(["new"] * len(batch))]
    assert len(fast) == len(slow) == len(keys)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(1, 60), st.integers(0, 3)), min_size=1, max_size=8),
    st.sampled_from(["B", "H"]),
    st.booleans(),
)
def test_runs_of_ids_are_added_as_a_dict_would_add_them(runs: list[tuple[int, int, int]], typecode: str, as_int_column: bool) -> None:
    """Columns of near-contiguous ids (a chunk of a file's keys), some overlapping earlier ones, some
    with a key repeated inside: the span test stores exactly the new, first-seen keys."""
    table, model = KeyTable(typecode), set()
    for start, length, repeats in runs:
        keys = list(range(start, start + length)) + [start + (i * 7) % length for i in range(repeats)]
        column = IntColumn(keys) if as_int_column else keys
        expected = []
        for k in keys:
            expected.append(k not in model)
            model.add(k)
        assert table.add_new_many(column) == expected
        assert len(table) == len(model)
    assert sorted(k for k, _ in table.items()) == sorted(model)


@pytest.mark.parametrize("keys", [[5, 5, 7], [7, 6, 5], [5, 7, 6, 6], [3, 4, 5], [9, 8, 10, 7]])
def test_a_column_as_wide_as_its_span_is_a_run_only_when_it_rises(keys: list[int]) -> None:
    """As many keys as slots in their span, yet a repeat leaves a gap (5, 5, 7 has no 6): only a
    rising column is exactly the span's ids."""
    table = KeyTable()
    expected = [k not in keys[:i] for i, k in enumerate(keys)]
    assert table.add_new_many(IntColumn(keys)) == expected
    assert sorted(k for k, _ in table.items()) == sorted(set(keys))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(1, 40), st.sampled_from(["a", "b", ("c", 1)])), min_size=1, max_size=8),
    st.sampled_from(["B", "H"]),
)
def test_runs_of_ids_are_put_as_a_dict_would_put_them(runs: list[tuple[int, int, object]], typecode: str) -> None:
    """A column of rising, gap-free ids (a chunk of a file's keys in order) goes in with one slice
    assignment: values and the key count are those of a dict, earlier keys in the run included."""
    table, model = KeyTable(typecode), {}
    for i, (start, length, value) in enumerate(runs):
        keys = list(range(start, start + length))
        values = [value if j % 3 else (value, i) for j in range(length)]
        table.put_many(IntColumn(keys) if i % 2 else keys, values)
        model.update(zip(keys, values, strict=True))
        assert len(table) == len(model)
    assert sorted(map(repr, table.items())) == sorted(map(repr, model.items()))


FAR = 90_000_000_000  # ids of an export may start anywhere
WINDOW_KEYS = st.one_of(st.integers(FAR - 120, FAR + 120), st.integers(FAR - 3000, FAR + 3000), st.integers(-3, 40), st.text(max_size=2))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["add_new_many", "put_many", "put_new_codes", "put", "absorb"]), st.lists(WINDOW_KEYS, max_size=25)), max_size=8),
    st.sampled_from([64, 4096, 1 << 25]),
    st.booleans(),
)
@example(steps=[("add_new_many", [FAR + 121])], limit=64, as_int_column=False)  # a key next to the probe's
def test_slots_follow_the_keys_wherever_they_start(steps: list[tuple[str, list[object]]], limit: int, as_int_column: bool) -> None:
    """Slots start at the first int keys and move down for smaller ones; keys outside the window (small
    ones here, so that it happens) go to the dict. Whatever the order, the table answers as a
    dict would, through every bulk path, a span, a save and a load, and a set of bits does too."""
    with patch.object(keys_module, "DENSE_LIMIT", limit):
        table, model, bits = KeyTable(), {}, KeyBits()
        seen: set[object] = set()  # what the bits hold
        for step, (kind, keys) in enumerate(steps):
            value = f"v{step % 3}"
            ints = IntColumn(k for k in keys if type(k) is int) if as_int_column else [k for k in keys if type(k) is int]
            if kind == "add_new_many":
                expected = [k not in model and k not in keys[:i] for i, k in enumerate(keys)]
                assert table.add_new_many(keys, value) == expected
                for k in keys:
                    model.setdefault(k, value)
            elif kind == "put_many":
                table.put_many(keys, [value] * len(keys))
                model.update(dict.fromkeys(keys, value))
            elif kind == "put_new_codes":
                fresh = list(dict.fromkeys(k for k in ints if k not in model))
                table.put_new_codes(IntColumn(fresh) if as_int_column else fresh, table.code(value))
                model.update(dict.fromkeys(fresh, value))
            elif kind == "put":
                for k in keys:
                    table.put(k, value)
                    model[k] = value
            else:  # another table's keys (those not here yet) joined through its span
                other = KeyTable()
                fresh = list(dict.fromkeys(k for k in keys if k not in model))
                other.put_many(fresh, [value] * len(fresh))
                assert table.overlaps(other.span()) is False and table.overlaps(other) is False
                table.absorb(other.span() if step % 2 else other)
                model.update(dict.fromkeys(fresh, value))
            probe = KeyTable()
            probe.put_many(keys, [True] * len(keys))
            assert sorted(map(repr, bits.common(probe.span()))) == sorted(map(repr, set(keys) & seen))
            assert bits.overlaps(probe) == bool(set(keys) & seen)
            bits.absorb(probe.span() if step % 2 else probe)
            seen |= set(keys)
            assert table.overlaps(probe.span()) == table.overlaps(probe) == bool(set(keys) & set(model))
            asked = [*keys, *ints, FAR, FAR - 121, -4, "zz"]
            assert table.get_many(asked) == [model.get(k) for k in asked]
            assert len(table) == len(model)
        assert sorted(map(repr, table.items())) == sorted(map(repr, model.items()))
        assert len(bits) == len(seen) and all(k in bits for k in seen) and FAR + 3001 not in bits  # past every generated key
        assert sorted(map(repr, bits.table().items())) == sorted(repr((k, True)) for k in seen)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(WINDOW_KEYS, st.sampled_from(["a", ("x", 2)]), max_size=30), st.sampled_from([64, 4096, 1 << 25]))
def test_a_saved_table_keeps_where_its_slots_start(tmp_path_factory: pytest.TempPathFactory, model: dict[object, object], limit: int) -> None:
    with patch.object(keys_module, "DENSE_LIMIT", limit):
        table = KeyTable()
        table.put_many(list(model), list(model.values()))
        path = tmp_path_factory.mktemp("idx") / "t.idx"
        table.save(path)
        loaded = KeyTable.load(path)
        assert sorted(map(repr, loaded.items())) == sorted(map(repr, model.items())) and len(loaded) == len(model)
        assert loaded.get_many(list(model)) == list(model.values())


def test_ids_far_from_zero_take_a_byte_each() -> None:
    """Ids of 90,000,000,001 upwards in slots from there, not in the dict (which took a 1.3M-row batch
    with such ids to 480 MB); ids that fit the window from 0 keep slot = key (no subtraction per key),
    and a span hands over just the slots in use."""
    table = KeyTable()
    table.add_new_many(IntColumn(range(FAR + 1, FAR + 100_001)))
    table.add_new_many(IntColumn(range(FAR - 50_000, FAR + 1)))  # smaller ones later: the slots move down
    assert table._sparse == {} and len(table) == 150_001 and len(table._dense) < 300_000
    assert table.get_many([FAR - 50_000, FAR + 100_000, FAR + 100_001, FAR - 50_001]) == [True, True, None, None]
    piece = KeyTable()
    piece.add_new_many(IntColumn(range(730_000, 735_000)))
    assert piece._base == 0 and (piece.span().start, len(piece.span().dense)) == (730_000, 5_000)
