"""Compact key -> value maps for uniqueness, references, lookups and the processed-store index.

A batch of 400k orders and 880k items would need ~150 MB as Python sets and dicts of int keys.
Here an int key is a slot in an `array` holding a small value code (0 = absent), and values are
dictionary-encoded (a date, a category, a (seq, date) pair repeat a lot). Slots are one byte while
there are fewer than 256 distinct values and widen to two or four bytes when needed. A table's slots
cover DENSE_LIMIT keys from 0, or from the first int keys it stores when those do not fit there (ids
may start anywhere); other keys (outside that window, strings) fall back to a dict. Memory is then
1-4 bytes per key, whatever the file sizes and wherever the ids start.

>>> t = KeyTable()
>>> t.put(7, "2025-03-01"); t.put("x", "2025-03-02")
>>> t.get(7), t.get("x"), t.get(8), 7 in t, len(t)
('2025-03-01', '2025-03-02', None, True, 2)
"""

from __future__ import annotations

import json
import operator
from array import array
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, islice, repeat
from operator import itemgetter, lt, setitem
from pathlib import Path
from typing import Any

DENSE_LIMIT = 1 << 25  # 32M slots max (32-128 MiB worst case); ids outside the window go to the dict
_INT_ONLY = {int}


class IntColumn(list[int]):
    """A column whose every value is an `int` (no bool, no null): what a clean int column parses to.

    The bulk methods below take C-level paths only for such columns; for a plain list they first
    scan every key's type (about a fifth of a lookup's cost), for this one they need not."""

    __slots__ = ()


def _ints_only(keys: Sequence[Any]) -> bool:
    return type(keys) is IntColumn or set(map(type, keys)) == _INT_ONLY  # exactly `type(key) is int`, as put() has it


class KeyTable:
    def __init__(self, typecode: str = "B") -> None:
        # slots start at one byte (a set, or a few distinct values) and widen as codes need
        self._dense = array(typecode)
        # the int key of slot 0: 0 while the keys fit [0, DENSE_LIMIT), else set by the first int
        # keys stored (ids may start anywhere, 90,000,000,001 say) and lowered when smaller ones
        # come. Int keys in [base, base + DENSE_LIMIT) live in slots, all others in the dict.
        self._base: int | None = None
        self._sparse: dict[Hashable, int] = {}
        self._values: list[Any] = [None]  # code 0 = absent
        self._codes: dict[Any, int] = {}
        self._count = 0

    def _code(self, value: Any) -> int:
        code = self._codes.get(value)
        if code is None:
            code = len(self._values)
            if code >= 1 << (8 * self._dense.itemsize):
                self._dense = array("H" if code < 1 << 16 else "I", self._dense)
            self._values.append(value)
            self._codes[value] = code
        return code

    # where int keys go --------------------------------------------------------------------------
    def _slot(self, key: Hashable, store: bool = False) -> int | None:
        """The slot of `key`, or None when it is not an int in the dense window (`store`: the window
        may be set or moved down to take it)."""
        if type(key) is not int:
            return None
        if store and not self._window(key, key):
            return None
        base = self._base
        if base is None:
            return None
        slot = key - base
        return slot if 0 <= slot < DENSE_LIMIT else None

    def _window(self, low: int, top: int) -> bool:
        """Make int keys low..top storable in slots: the base set by the first int keys or lowered
        (with room below, so keys coming in falling order do not move the slots each time), the
        slots grown. False when they do not all fit the window: the caller stores them one by one."""
        base = self._base
        if base is None:
            if top - low >= DENSE_LIMIT:
                return False
            # ids that fit the window from 0 (the usual ones) keep slot = key: no subtraction per key
            # in the bulk paths (50-80 ns a key measured), for at most the slots below the first id
            base = self._base = 0 if low >= 0 and top < DENSE_LIMIT else low
        elif low < base:
            used = len(self._dense)
            if top - low >= DENSE_LIMIT or used + base - low > DENSE_LIMIT:
                return False
            # room below: twice the gap (a file whose ids fall chunk by chunk moves the slots rarely),
            # an eighth of the slots (each move copies them all), at most what the window allows
            self._lower_base(max(low - max(2 * (base - low), used // 8, 1024), base - (DENSE_LIMIT - used)))
            base = self._base
        if top - base >= DENSE_LIMIT:
            return False
        self._reserve_to(top - base)
        return True

    def _lower_base(self, base: int) -> None:
        """Slot 0 is key `base` from now on; keys of the dict that fall in the window move to slots."""
        shift = self._base - base  # type: ignore[operator]
        self._dense[0:0] = _zeros(self._dense.typecode, shift)
        self._base = base
        self._settle()

    def _settle(self) -> None:
        """Keys of the dict that are in the window (it moved) go to their slots."""
        base = self._base
        if base is None:
            return
        for key in [key for key in self._sparse if type(key) is int and 0 <= key - base < DENSE_LIMIT]:
            code = self._sparse.pop(key)
            self._reserve_to(key - base)
            self._dense[key - base] = code

    def _slots(self, keys: Sequence[int]) -> Sequence[int]:
        """Int keys (all in the window) as their slots."""
        base = self._base
        return keys if not base else list(map(operator.sub, keys, repeat(base)))

    def put(self, key: Hashable, value: Any = True) -> None:
        self._put_code(key, self._code(value))

    def add_new(self, key: Hashable, value: Any = True) -> bool:
        """Insert unless present; True when inserted (the uniqueness check in one probe)."""
        if key in self:
            return False
        self.put(key, value)
        return True

    def _reserve_to(self, top: int) -> None:
        """Slots up to slot `top` (below DENSE_LIMIT) exist."""
        if top >= len(self._dense):
            grow = min(max(top + 1 - len(self._dense), len(self._dense) // 4, 1024), DENSE_LIMIT - len(self._dense))
            _grow(self._dense, grow)

    def _stores_in_slots(self, keys: Sequence[Any]) -> tuple[int, int] | None:
        """(low, top) slots of `keys` when they are ints that all fit the window (made ready to
        store them), else None."""
        if not keys or not _ints_only(keys):
            return None
        low, top = min(keys), max(keys)
        if not self._window(low, top):
            return None
        base = self._base or 0
        return low - base, top - base

    def add_new_many(self, keys: list[Any], value: Any = True) -> list[bool]:
        """`add_new` over a column in one call (the per-key method call is the cost here)."""
        code = self._code(value)
        bounds = self._stores_in_slots(keys)
        if bounds is None:
            return [self.add_new(key, value) for key in keys]
        slots = self._slots(keys)
        if self._new_run(slots, code, *bounds):
            return [True] * len(keys)
        dense = self._dense
        held = take(dense, slots)
        distinct = len(set(slots)) == len(slots)
        if distinct and not any(held):
            _store(dense, slots, repeat(code))  # all new: C-level stores
            self._count += len(slots)
            return [True] * len(slots)
        # some held already, or repeated in the column (a duplicate's first occurrence is the one
        # added): decided in C-level maps, not key by key
        added = list(map(operator.not_, held))
        if not distinct:
            first = [False] * len(slots)  # each key's first position (the reversed pairs leave it last)
            _store(first, dict(zip(reversed(slots), range(len(slots) - 1, -1, -1), strict=True)).values(), repeat(True))  # type: ignore[arg-type]
            added = list(map(operator.and_, added, first))
        new = list(compress(slots, added))
        _store(dense, new, repeat(code))
        self._count += len(new)
        return added

    def _new_run(self, slots: Sequence[int], code: int, low: int, top: int) -> bool:
        """Store `code` in `slots` (from `low` to `top`, all allocated) when they are distinct and
        none is taken yet, tested over the span of slots they fall in (a chunk of a file's ids is a
        near-contiguous run): the span is all empty before, and afterwards as many of its slots are
        taken as there are keys. Two array copies instead of a lookup and a set entry per key.
        False (nothing stored) otherwise."""
        span = top + 1 - low
        if span > 8 * len(slots):
            return False
        dense = self._dense
        if _free_slots(dense, low, top + 1) != span:
            return False
        if _rising_run(slots):  # one store for the whole span
            dense[low : top + 1] = array(dense.typecode, [code]) * span
            self._count += span
            return True
        _store(dense, slots, repeat(code))
        if span - _free_slots(dense, low, top + 1) != len(slots):  # a key repeated within the column
            dense[low : top + 1] = array(dense.typecode, bytes(dense.itemsize * span))  # empty, as it was
            return False
        self._count += len(slots)
        return True

    def code(self, value: Any) -> int:
        """The code a value is stored under (for `put_codes`)."""
        return self._code(value)

    def put_codes(self, keys: Sequence[Any], codes: Sequence[int]) -> None:
        """`put_many` with values already encoded: one code lookup per distinct value, not per key."""
        keys = list(keys)
        bounds = self._stores_in_slots(keys)
        if bounds is None:
            for key, code in zip(keys, codes, strict=True):
                self._put_code(key, code)
            return
        dense, slots = self._dense, self._slots(keys)
        low, top = bounds
        if _rising_run(slots):  # one slice assignment
            self._count += _free_slots(dense, low, top + 1)
            dense[low : top + 1] = array(dense.typecode, codes)
            return
        self._count += take(dense, list(set(slots))).count(0)
        _store(dense, slots, codes)

    def _put_code(self, key: Hashable, code: int) -> None:
        slot = self._slot(key, store=True)
        if slot is not None:
            if not self._dense[slot]:
                self._count += 1
            self._dense[slot] = code
        else:
            if key not in self._sparse:
                self._count += 1
            self._sparse[key] = code

    def put_new_codes(self, keys: Sequence[Any], code: int, bounds: tuple[int, int] | None = None) -> None:
        """`put_codes` of one code for keys known to be absent and distinct (a batch's new ids, checked
        with `get_many` beforehand): no per-key presence test, C-level stores for int slots.
        `bounds`: (smallest, largest) of int keys, when the caller has them already."""
        if not keys:
            return
        if type(keys) is not array and type(keys) is not IntColumn:
            keys = list(keys)
            if not _ints_only(keys):
                self.put_codes(keys, [code] * len(keys))
                return
        low, top = bounds if bounds is not None else (min(keys), max(keys))
        if not self._window(low, top):
            self.put_codes(keys, [code] * len(keys))
            return
        base = self._base
        _store(self._dense, map(operator.sub, keys, repeat(base)) if base else keys, repeat(code))
        self._count += len(keys)

    def put_many(self, keys: list[Any], values: list[Any]) -> None:
        try:
            code_of = {v: self._code(v) for v in set(values)}  # one dictionary probe per distinct value
        except TypeError:  # unhashable values: encode one by one
            self.put_codes(keys, list(map(self._code, values)))
            return
        self.put_codes(keys, list(map(code_of.__getitem__, values)))

    def get_many(self, keys: list[Any]) -> list[Any]:
        dense, n, sparse, values, base = self._dense, len(self._dense), self._sparse, self._values, self._base
        if keys and base is not None and _ints_only(keys):
            low, top = min(keys), max(keys)
            if low >= base and top - base < DENSE_LIMIT:  # all in the window: a key not in a slot is absent
                slots = self._slots(keys)
                if top - base < n:
                    return take(values, take(dense, slots))
                past = list(compress(range(len(slots)), map(n.__le__, slots)))
                inside = list(slots)
                for i in past:
                    inside[i] = 0
                found = take(values, take(dense, inside))
                for i in past:
                    found[i] = None
                return found
        if not sparse and (base is None or not keys):  # no int key stored, or nothing asked
            return [None] * len(keys)
        return [self.get(key) for key in keys]

    def get(self, key: Hashable, default: Any = None) -> Any:
        slot = self._slot(key)
        code = self._sparse.get(key, 0) if slot is None else self._dense[slot] if slot < len(self._dense) else 0
        return self._values[code] if code else default

    def __contains__(self, key: Hashable) -> bool:
        slot = self._slot(key)
        if slot is not None:
            return slot < len(self._dense) and self._dense[slot] != 0
        return key in self._sparse

    def __len__(self) -> int:
        return self._count

    def span(self) -> KeySpan:
        """This table's keys over just the slots it uses: what a worker process hands back (a piece
        of a file holds a narrow range of ids)."""
        lo, hi = _span(self._dense)
        return KeySpan((self._base or 0) + lo, self._dense[lo:hi], self._values, self._sparse, self._count)

    def overlaps(self, other: KeyTable | KeySpan) -> bool:
        """Does any key of `other` sit in this table too? Where both hold slots, they are compared as
        bitmaps (big-int ANDs, a window of slots at a time), so two tables of a million ids take
        milliseconds, not a key-by-key scan, and little memory beyond the tables."""
        start, dense, sparse = _dense_span(other)
        base, mine = self._base or 0, self._dense
        inside_lo, inside_hi = max(start, base), min(start + len(dense), base + len(mine))
        for a in range(inside_lo, inside_hi, _MERGE_SLOTS):  # a window at a time: bounded temporaries
            b = min(a + _MERGE_SLOTS, inside_hi)
            if _presence(mine[a - base : b - base]) & _presence(dense[a - start : b - start]):
                return True
        # the rest key by key: this table's dict against all of `other`, `other`'s dict against all of this
        return any(_span_holds(start, dense, sparse, key) for key in self._sparse) or any(key in self for key in sparse)

    def absorb(self, other: KeyTable | KeySpan, value: Any = None) -> None:
        """Put every key of `other` here, with `value` or else with its value in `other`; the tables
        must not overlap (see `overlaps`). Over the span of slots `other` uses, one-byte slot arrays
        are joined as big ints, each of `other`'s codes translated to this table's code for the
        same value."""
        values = other.values if isinstance(other, KeySpan) else other._values
        if value is not None:
            codes = {c: self._code(value) for c in range(1, len(values))}
        else:
            codes = {c: self._code(v) for c, v in enumerate(values) if c}
        start, dense, sparse = _dense_span(other)
        if dense and not self._window(start, start + len(dense) - 1):  # beyond the window: one by one
            for i in compress(range(len(dense)), dense):
                self._put_code(start + i, codes[dense[i]])
        elif dense:
            lo = start - (self._base or 0)
            if self._dense.itemsize == 1 and dense.itemsize == 1:  # disjoint lanes: OR, no carries
                table = bytes(codes.get(c, 0) for c in range(256))
                for first in range(0, len(dense), _MERGE_SLOTS):  # a window at a time: bounded temporaries
                    a, b = lo + first, lo + min(first + _MERGE_SLOTS, len(dense))
                    lanes = dense[first : b - lo].tobytes().translate(table)
                    merged = int.from_bytes(self._dense[a:b].tobytes(), "little") | int.from_bytes(lanes, "little")
                    self._dense[a:b] = array("B", merged.to_bytes(b - a, "little"))
            else:  # wider slots (more than 255 values: dates of a batch spanning years): each window's
                # codes translated by a C-level map over a code table, then joined as above
                table_w, typecode, size = [0] * len(values), self._dense.typecode, self._dense.itemsize
                for c, new in codes.items():
                    table_w[c] = new
                for first in range(0, len(dense), _MERGE_SLOTS):
                    a, b = lo + first, lo + min(first + _MERGE_SLOTS, len(dense))
                    lanes = array(typecode, map(table_w.__getitem__, dense[first : b - lo])).tobytes()
                    merged = int.from_bytes(self._dense[a:b].tobytes(), "little") | int.from_bytes(lanes, "little")
                    self._dense[a:b] = array(typecode, merged.to_bytes((b - a) * size, "little"))
            self._count += len(other) - len(sparse)
        for key, code in sparse.items():
            self._put_code(key, codes[code])

    def items(self) -> Iterator[tuple[Hashable, Any]]:
        values, base = self._values, self._base or 0
        for slot, code in enumerate(self._dense):
            if code:
                yield base + slot, values[code]
        for key, code in self._sparse.items():
            yield key, values[code]

    # persistence: a JSON header (value dictionary, sparse part) and the raw dense array ------------
    def save(self, path: Path) -> None:
        """Write to `path` (JSON header line + dense array bytes). Values must be JSON-able. Only the
        slots from the first key to the last are written: the same keys and values give the same
        bytes, whichever order they came in (where a table's slots start depends on that order)."""
        lo, hi = _span(self._dense)
        header = {
            "values": self._values[1:],
            "sparse": [[_key_json(k), c] for k, c in self._sparse.items()],
            "count": self._count,
            "dense_len": hi - lo,
            "typecode": self._dense.typecode,
            "base": self._base + lo if hi > lo else None,  # type: ignore[operator]
        }
        size = self._dense.itemsize
        with open(path, "wb") as fh:
            fh.write(json.dumps(header).encode() + b"\n")
            fh.write(memoryview(self._dense).cast("B")[lo * size : hi * size])  # no copy of the slots

    @classmethod
    def load(cls, path: Path) -> KeyTable:
        with open(path, "rb") as fh:
            header = json.loads(fh.readline())
            table = cls(header.get("typecode", "I"))
            table._values = [None, *(_value_from_json(v) for v in header["values"])]
            table._codes = {v: i for i, v in enumerate(table._values) if i}
            table._sparse = {_key_from_json(k): c for k, c in header["sparse"]}
            table._count = header["count"]
            table._dense.fromfile(fh, header["dense_len"])
            # files written before the base existed held slots from key 0
            table._base = header["base"] if "base" in header else (0 if header["dense_len"] else None)
        table._settle()  # saved from its first key on, the window may take keys the dict held
        return table


def _span_holds(start: int, dense: array, sparse: dict[Hashable, int], key: Hashable) -> bool:  # type: ignore[type-arg]
    """Does a span (its first slot's key, slots, dict) hold `key`?"""
    if type(key) is int and 0 <= key - start < len(dense) and dense[key - start]:
        return True
    return key in sparse


class KeyBits:
    """A set of keys at one bit per int slot: what the parent keeps of the keys its worker processes
    saw in a dataset (uniqueness crosses files and pieces). A 5M-row batch's ids would take 5 MB as
    a KeyTable's one-byte slots and 0.6 MB here. It is only merged into (`absorb`) and compared
    (`overlaps`, `common`), a window of slots at a time as big ints; `table` gives the KeyTable back
    for a file validated again against it in the parent. Like a table's, its slots start at the first
    keys it takes (a multiple of 8) and cover DENSE_LIMIT keys at most; other keys go to a set.

    >>> bits = KeyBits(); t = KeyTable(); t.put_many([3, 4, "x"], [True] * 3)
    >>> bits.absorb(t.span()); len(bits), bits.overlaps(t.span()), list(bits.table().items())
    (3, True, [(3, True), (4, True), ('x', True)])
    """

    def __init__(self) -> None:
        self._bits = bytearray()  # bit k % 8 of byte k // 8: key base + k
        self._base: int | None = None
        self._sparse: set[Hashable] = set()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: Hashable) -> bool:
        if type(key) is int and self._base is not None and 0 <= key - self._base < DENSE_LIMIT:
            slot = key - self._base
            return slot < 8 * len(self._bits) and bool(self._bits[slot >> 3] >> (slot & 7) & 1)
        return key in self._sparse

    def _window(self, low: int, top: int) -> bool:
        """Bits for keys low..top (as `KeyTable._window`), the base a multiple of 8."""
        if self._base is None:
            if top - low >= DENSE_LIMIT:
                return False
            self._base = low - low % 8
        elif low < self._base:
            base = low - low % 8
            if top - base >= DENSE_LIMIT or 8 * len(self._bits) + self._base - base > DENSE_LIMIT:
                return False
            self._bits[0:0] = bytes((self._base - base) // 8)
            self._base = base
            moving = [key for key in self._sparse if type(key) is int and 0 <= key - base < DENSE_LIMIT]
            self._sparse.difference_update(moving)
            for key in moving:
                self._set(key)
        if top - self._base >= DENSE_LIMIT:
            return False
        if 8 * len(self._bits) <= top - self._base:
            self._bits.extend(bytes((top - self._base) // 8 + 1 - len(self._bits)))
        return True

    def _set(self, key: int) -> None:
        """One int key in the window (see `_window`) into its bit."""
        slot = key - self._base  # type: ignore[operator]
        if 8 * len(self._bits) <= slot:
            self._bits.extend(bytes(slot // 8 + 1 - len(self._bits)))
        self._bits[slot >> 3] |= 1 << (slot & 7)

    def _inside(self, start: int, dense: array) -> tuple[int, int]:  # type: ignore[type-arg]
        """The part [a, b) of a span's slots (slot 0: key `start`) that this set's bits cover."""
        if self._base is None:
            return 0, 0
        a = min(max(self._base - start, 0), len(dense))
        b = max(min(self._base + 8 * len(self._bits) - start, len(dense)), a)
        return a, b

    def overlaps(self, other: KeyTable | KeySpan) -> bool:
        return bool(self.common(other, first=True))

    def common(self, other: KeyTable | KeySpan, first: bool = False) -> list[Hashable]:
        """The keys of `other` that are here too (`first`: stop at the first one found)."""
        start, dense, sparse = _dense_span(other)
        found: list[Hashable] = []
        a, b = self._inside(start, dense)
        if b > a:
            lo = start + a - self._base  # type: ignore[operator]
            for at, bits, size in _bit_windows(lo, dense[a:b]):
                both = int.from_bytes(self._bits[at : at + size], "little") & bits
                if both:  # the set bits' places, lowest first: C-level finds over the binary digits
                    digits = bin(both)[:1:-1]
                    place = digits.find("1")
                    while place >= 0:
                        found.append(self._base + at * 8 + place)  # type: ignore[operator]
                        if first:
                            return found
                        place = digits.find("1", place + 1)
        # the rest key by key: the set against `other`'s slots, `other`'s dict against all of this
        found.extend(key for key in self._sparse if _span_holds(start, dense, {}, key))
        found.extend(key for key in sparse if key in self)
        return found[:1] if first else found

    def absorb(self, other: KeyTable | KeySpan, value: Any = True) -> None:
        """Add the keys of `other` (`value` is taken for KeyTable's signature: a set holds no
        values). Unlike a table's, they may overlap these."""
        start, dense, sparse = _dense_span(other)
        if dense and self._window(start, start + len(dense) - 1):
            for at, bits, size in _bit_windows(start - self._base, dense):  # type: ignore[operator]
                held = int.from_bytes(self._bits[at : at + size], "little")
                self._count += (bits & ~held).bit_count()
                self._bits[at : at + size] = (held | bits).to_bytes(size, "little")
        else:  # beyond the window (or nothing): key by key
            for i in compress(range(len(dense)), dense):
                self._add(start + i)
        for key in sparse:
            self._add(key)

    def _add(self, key: Hashable) -> None:
        if key in self:
            return
        self._count += 1
        if type(key) is int and self._window(key, key):
            self._set(key)
        else:
            self._sparse.add(key)

    def table(self) -> KeyTable:
        """The same keys as a KeyTable of one-byte slots, each with the value True."""
        table = KeyTable()
        table.code(True)  # code 1: a slot's lane below is its code
        lanes = bin(int.from_bytes(self._bits, "little"))[:1:-1] if any(self._bits) else ""
        table._dense = array("B", lanes.encode().translate(_ASCII_TO_LANE))
        table._base = self._base
        table._sparse = dict.fromkeys(self._sparse, 1)
        table._count = self._count
        return table


_LANE_TO_ASCII = bytes.maketrans(b"\x00\x01", b"01")
_ASCII_TO_LANE = bytes.maketrans(b"01", b"\x00\x01")


def _bit_windows(lo: int, dense: array) -> Iterator[tuple[int, int, int]]:  # type: ignore[type-arg]
    """The slots dense[i] (slot lo + i) holding a key, as bits: (first byte of a bit array, the int
    of the bits from there, its size in bytes), _MERGE_SLOTS slots at a time (bounded temporaries),
    each window but the first starting on a byte of the bit array."""
    start = 0
    while start < len(dense):
        slot = lo + start
        end = min(len(dense), start + max(_MERGE_SLOTS, 8) - slot % 8)
        lanes = _lanes(dense[start:end]).translate(_LANE_TO_ASCII)[::-1]  # slot order, highest first
        yield slot // 8, int(lanes, 2) << slot % 8, (slot % 8 + end - start + 7) // 8
        start = end


def _lanes(dense: array) -> bytes:  # type: ignore[type-arg]
    """One byte per slot: 1 where it holds a key, else 0."""
    return dense.tobytes().translate(_NONZERO_TO_ONE) if dense.itemsize == 1 else bytes(map(bool, dense))


_ZERO_BLOCK = bytes(1 << 16)


def _grow(dense: array, slots: int) -> None:  # type: ignore[type-arg]
    """Append `slots` empty slots, a block of a shared zero buffer at a time: no temporary the size of
    the growth (the first date of a 5M-row batch sizes its index at once: 3.3 MB of zeros)."""
    size = slots * dense.itemsize
    for start in range(0, size, len(_ZERO_BLOCK)):
        dense.frombytes(memoryview(_ZERO_BLOCK)[: min(len(_ZERO_BLOCK), size - start)])


def _zeros(typecode: str, slots: int) -> array:  # type: ignore[type-arg]
    zeros = array(typecode)
    _grow(zeros, slots)
    return zeros


def _rising_run(keys: Sequence[int]) -> bool:
    """Are these ints (at least one) exactly keys[0], keys[0] + 1, ..., keys[-1] in that order (a chunk
    of a file's ids in order)? As many as their span and rising: no gap, no repeat."""
    return keys[-1] + 1 - keys[0] == len(keys) and all(map(lt, keys, islice(keys, 1, None)))


def _free_slots(dense: array, start: int, end: int) -> int:  # type: ignore[type-arg]
    """How many of the slots dense[start:end] hold no key."""
    part = dense[start:end]
    return part.tobytes().count(0) if part.itemsize == 1 else part.count(0)


def take(seq: Any, keys: Sequence[Any]) -> list[Any]:
    """`[seq[k] for k in keys]` in one C-level call: an itemgetter of all the keys indexes the
    sequence directly, twice as fast as a map of its bound `__getitem__` (three times on an array,
    whose `__getitem__` is a slot wrapper)."""
    if len(keys) > 1:
        return list(itemgetter(*keys)(seq))
    return [seq[k] for k in keys]


def _store(dense: array, keys: Iterable[int], codes: Iterable[int]) -> None:  # type: ignore[type-arg]
    """dense[k] = code for each pair, C-level (`operator.setitem`: a bound `__setitem__` of an array
    is a slot wrapper, half again as slow)."""
    deque(map(setitem, repeat(dense), keys, codes), 0)


_NONZERO_TO_ONE = bytes([0] + [1] * 255)
_MERGE_SLOTS = 1 << 18  # slots compared or merged at a time (each window's copies stay ~1 MiB)


@dataclass
class KeySpan:
    """A KeyTable cut down to the slots that hold keys (`KeyTable.span`); `absorb` and `overlaps`
    take it as they take a table."""

    start: int  # the key of dense[0]
    dense: array  # type: ignore[type-arg]
    values: list[Any]
    sparse: dict[Hashable, int]
    count: int

    def __len__(self) -> int:
        return self.count


def _dense_span(table: KeyTable | KeySpan) -> tuple[int, array, dict[Hashable, int]]:  # type: ignore[type-arg]
    """(the key of the first slot, the slots from there that hold keys, the sparse part) of a table
    or a span."""
    if isinstance(table, KeySpan):
        return table.start, table.dense, table.sparse
    lo, hi = _span(table._dense)
    return (table._base or 0) + lo, table._dense[lo:hi], table._sparse


_WINDOW = 1 << 16
_ZEROS = bytes(_WINDOW)


def _span(dense: array) -> tuple[int, int]:  # type: ignore[type-arg]
    """(first, last + 1) of the slots holding a key. A worker's table spans the ids of its own piece
    of a file (or a small file), a small part of its slots from 0: the empty ones are skipped a
    window at a time by comparing with zeros (memcmp: 0.07 ms for 860 KB, where a regex search for
    the first non-zero byte took 5.6 ms, on each of a 40-file batch's 80 files)."""
    view = memoryview(dense).cast("B")
    size, end = dense.itemsize, len(view)
    first = None
    for start in range(0, end, _WINDOW):
        window = view[start : start + _WINDOW].tobytes()
        if window != _ZEROS[: len(window)]:
            first = start + len(window) - len(window.lstrip(b"\x00"))
            break
    if first is None:
        return 0, 0
    while end > first:  # the last key: back from the end a window at a time
        window = view[max(end - _WINDOW, first) : end].tobytes()
        if window != _ZEROS[: len(window)]:
            end -= len(window) - len(window.rstrip(b"\x00"))
            break
        end -= len(window)
    return first // size, -(-end // size)


def _presence(dense: array) -> int:  # type: ignore[type-arg]
    """A dense slot array as an int with byte lane i = 1 where slot i holds a key."""
    return int.from_bytes(_lanes(dense), "little")


def _key_json(key: Hashable) -> Any:
    return {"i": key} if isinstance(key, int) else {"s": str(key)}


def _key_from_json(obj: dict[str, Any]) -> Hashable:
    return obj["i"] if "i" in obj else obj["s"]


def _value_from_json(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
