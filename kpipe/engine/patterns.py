"""Regular expressions both executors read alike: the operand of the `matches` check.

A pattern is written in Python's `re` syntax and parsed once, by Python's own parser, when the config
loads. It is then written out again, twice, in the small subset whose meaning Python's `re` and RE2
(DuckDB's `regexp_full_match`) share: literals as code-point escapes, every character class as an
explicit list of code-point ranges, non-capturing groups, alternation, counted repetition, the two
text anchors and ASCII word boundaries. So each executor runs a pattern that means, character for
character, what the other runs, whatever either engine would make of the user's spelling:

- `\\d` is `[0-9]`, `\\w` is `[0-9A-Za-z_]`, `\\s` is space, tab, line feed, vertical tab, form feed and
  carriage return (ASCII in both, where Python alone would read them as Unicode classes);
- `.` is any character but a line feed; `^` is the start of the value, `$` its end (never before a
  final line feed, as Python's `$` would);
- with `ignore_case`, the value is lower-cased as SQL's `lower()` does (`vocabulary.lower`) and each
  character of the pattern, literal or class, matches what lower-cases to a lower-cased member.

What RE2 cannot run is refused, each with its reason: lookarounds, backreferences, conditional groups,
atomic groups and possessive quantifiers, inline flags, repetition counts above 1000 (RE2's limit, also
on nested counts multiplied). Imports neither petl nor DuckDB.
"""

from __future__ import annotations

import re
import sys
import warnings
from bisect import bisect_right
from functools import cache
from re import _constants as C  # the parser's own opcodes
from re import _parser as sre  # Python's parser of `re` syntax: the pattern means what Python says it means

MAX_REPEAT = 1000  # RE2's: a count, and nested counts multiplied (integer-divided down from 1000)
TOP = sys.maxunicode
SURROGATES = (0xD800, 0xDFFF)  # no valid UTF-8 text holds one: left out of every class
_FLAGS_ALLOWED = C.SRE_FLAG_UNICODE | C.SRE_FLAG_VERBOSE  # `(?x)` only changes how the pattern is written

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint, not adjacent, no surrogates


class PatternError(ValueError):
    """A pattern refused: what is wrong with it, and what is allowed instead."""


def _normal(pairs: list[tuple[int, int]]) -> Ranges:
    out: list[list[int]] = []
    for lo, hi in sorted(pairs):
        for a, b in ((lo, min(hi, SURROGATES[0] - 1)), (max(lo, SURROGATES[1] + 1), hi)):
            if a > b:
                continue
            if out and a <= out[-1][1] + 1:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
    return tuple((a, b) for a, b in out)


def _complement(ranges: Ranges) -> Ranges:
    out, start = [], 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= TOP:
        out.append((start, TOP))
    return _normal(out)


def _chars(text: str) -> Ranges:
    return _normal([(ord(c), ord(c)) for c in text])


# (class, negated): `\D` is what `\d` is not
CATEGORIES: dict[object, tuple[Ranges, bool]] = {
    C.CATEGORY_DIGIT: (_normal([(0x30, 0x39)]), False),
    C.CATEGORY_WORD: (_normal([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]), False),
    C.CATEGORY_SPACE: (_chars(" \t\n\v\f\r"), False),
}
CATEGORIES[C.CATEGORY_NOT_DIGIT] = (CATEGORIES[C.CATEGORY_DIGIT][0], True)
CATEGORIES[C.CATEGORY_NOT_WORD] = (CATEGORIES[C.CATEGORY_WORD][0], True)
CATEGORIES[C.CATEGORY_NOT_SPACE] = (CATEGORIES[C.CATEGORY_SPACE][0], True)
LINE_FEED = _chars("\n")


def _lower(cp: int) -> int:
    return ord(chr(cp).lower()[0])  # as vocabulary.lower (SQL's lower(): simple case mapping)


@cache
def _changed() -> tuple[int, ...]:
    """Every code point that lower-casing changes (computed once, the first time a pattern ignores case)."""
    return tuple(cp for cp in range(TOP + 1) if not SURROGATES[0] <= cp <= SURROGATES[1] and _lower(cp) != cp)


def _folded(ranges: Ranges) -> Ranges:
    """A class for a lower-cased value: its members and their lower case (a value lower-cased holds no
    character lower-casing changes, so keeping those members changes nothing, and keeps the class short)."""
    starts = [lo for lo, _hi in ranges]
    changed = [cp for cp in _changed() if (k := bisect_right(starts, cp) - 1) >= 0 and cp <= ranges[k][1]]
    return _normal([*ranges, *((_lower(cp), _lower(cp)) for cp in changed)]) if changed else ranges


_REFUSED = {
    C.GROUPREF: "backreferences (\\1, (?P=name)) are not supported",
    C.GROUPREF_EXISTS: "conditional groups ((?(1)...|...)) are not supported",
    C.ASSERT: "lookarounds ((?=...), (?<=...)) are not supported",
    C.ASSERT_NOT: "lookarounds ((?!...), (?<!...)) are not supported",
    C.ATOMIC_GROUP: "atomic groups ((?>...)) are not supported",
    C.POSSESSIVE_REPEAT: "possessive quantifiers (*+, ++, ?+) are not supported",
}


class _Writer:
    """The parsed pattern written out in one dialect: 'python' or 're2'."""

    def __init__(self, dialect: str, fold: bool) -> None:
        self.dialect, self.fold = dialect, fold

    def char(self, cp: int) -> str:
        if chr(cp).isascii() and chr(cp).isalnum():
            return chr(cp)
        if self.dialect == "re2":
            return f"\\x{{{cp:X}}}"
        return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"

    def folded(self, ranges: Ranges) -> Ranges:
        return _folded(ranges) if self.fold else ranges

    def members(self, items: list[tuple[object, object]]) -> Ranges:
        """A class's members (for a lower-cased value, with `fold`): a negation, of the whole class or
        of a category in it, is taken after folding (`[^a]` matches no `A` either)."""
        negate, literal, categories = False, [], []
        for op, arg in items:
            if op is C.NEGATE:
                negate = True
            elif op is C.LITERAL:
                literal.append((arg, arg))
            elif op is C.RANGE:
                literal.append(arg)
            elif op is C.CATEGORY and arg in CATEGORIES:
                ranges, negated = CATEGORIES[arg]
                categories += list(_complement(self.folded(ranges)) if negated else self.folded(ranges))
            else:
                raise PatternError(f"{op} {arg} inside a class is not supported")
        members = _normal([*self.folded(_normal(literal)), *categories])  # type: ignore[arg-type]
        return _complement(members) if negate else members

    def ranges(self, ranges: Ranges) -> str:
        if not ranges:  # a class nothing is in
            return f"[^\\x00-{self.char(TOP)}]"
        if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            return self.char(ranges[0][0])
        return "[" + "".join(self.char(lo) if lo == hi else f"{self.char(lo)}-{self.char(hi)}" for lo, hi in ranges) + "]"

    def sequence(self, items: list[tuple[object, object]], budget: int) -> str:
        return "".join(self.item(op, arg, budget) for op, arg in items)

    def item(self, op: object, arg: object, budget: int) -> str:  # one case per opcode
        if op in _REFUSED:
            raise PatternError(_REFUSED[op])  # type: ignore[index]
        if op is C.LITERAL:
            return self.ranges(self.folded(_normal([(arg, arg)])))  # type: ignore[list-item]
        if op is C.NOT_LITERAL:
            return self.ranges(_complement(self.folded(_normal([(arg, arg)]))))  # type: ignore[list-item]
        if op is C.ANY:
            return self.ranges(_complement(LINE_FEED))
        if op is C.IN:
            return self.ranges(self.members(arg))  # type: ignore[arg-type]
        if op is C.BRANCH:
            return "(?:" + "|".join(self.sequence(list(b), budget) for b in arg[1]) + ")"  # type: ignore[index]
        if op is C.SUBPATTERN:
            _group, add, delete, body = arg  # type: ignore[misc]
            if (add | delete) & ~_FLAGS_ALLOWED:
                raise PatternError("inline flags ((?i:...), (?s:...)) are not supported; allowed: `ignore_case: true` on the check")
            return "(?:" + self.sequence(list(body), budget) + ")"
        if op in (C.MAX_REPEAT, C.MIN_REPEAT):  # lazy or greedy: the same values match in full
            low, high, body = arg  # type: ignore[misc]
            bounded = high is not C.MAXREPEAT
            if low > MAX_REPEAT or (bounded and high > MAX_REPEAT):
                raise PatternError(f"a repetition count above {MAX_REPEAT} is not supported")
            if (low, high) in ((0, C.MAXREPEAT), (1, C.MAXREPEAT), (0, 1)):
                suffix = {0: "*", 1: "+"}[low] if not bounded else "?"
            else:  # a counted repetition: RE2 divides its budget by the count
                count = high if bounded else low
                budget = budget // count if count > 0 else budget
                if budget == 0:
                    raise PatternError(f"nested repetition counts multiply past {MAX_REPEAT}")
                suffix = f"{{{low}}}" if low == high else f"{{{low},}}" if not bounded else f"{{{low},{high}}}"
            atom = len(body) == 1 and body[0][0] in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN)
            inner = self.sequence(list(body), budget)
            return (inner if atom else "(?:" + inner + ")") + suffix
        if op is C.AT:
            if arg in (C.AT_BEGINNING, C.AT_BEGINNING_STRING):
                return "\\A"
            if arg in (C.AT_END, C.AT_END_STRING):
                return "\\z" if self.dialect == "re2" else "\\Z"
            if arg is C.AT_BOUNDARY:
                return "\\b"
            if arg is C.AT_NON_BOUNDARY:
                return "\\B"
        raise PatternError(f"{op} {arg or ''} is not supported".replace(" ''", ""))


class Pattern:
    """A `matches` operand: the user's pattern and what each executor runs for it."""

    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source:
            raise PatternError("an empty pattern matches no value; allowed: a regular expression")
        if any(SURROGATES[0] <= ord(c) <= SURROGATES[1] for c in source):
            raise PatternError("it holds a lone surrogate, not a character; allowed: Unicode characters")
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # a nested set, `[[:alpha:]]`: RE2 reads it otherwise
            try:
                parsed = sre.parse(source)
            except re.error as exc:
                raise PatternError(f"not a regular expression: {exc}") from None
            except FutureWarning as exc:
                raise PatternError(f"{exc}: POSIX classes ([[:alpha:]]) and set operations are not supported; allowed: [A-Za-z], \\d, \\w, \\s") from None
        if parsed.state.flags & ~_FLAGS_ALLOWED:
            raise PatternError("inline flags ((?i), (?s), (?m), (?a)) are not supported; allowed: `ignore_case: true` on the check")
        self.source = source
        self._items = list(parsed)
        self._written: dict[tuple[str, bool], str] = {}
        self._compiled: dict[bool, re.Pattern[str]] = {}
        for dialect in ("python", "re2"):
            self.written(dialect, False)  # refused now, when the config loads, if it is to be refused
        self.compiled(False)

    def written(self, dialect: str, fold: bool) -> str:
        if (dialect, fold) not in self._written:
            self._written[dialect, fold] = _Writer(dialect, fold).sequence(self._items, MAX_REPEAT)
        return self._written[dialect, fold]

    def compiled(self, fold: bool) -> re.Pattern[str]:
        if fold not in self._compiled:
            self._compiled[fold] = re.compile(self.written("python", fold), re.ASCII)  # ASCII: `\b` as RE2's
        return self._compiled[fold]

    def fullmatch(self, text: str, fold: bool) -> bool:
        """Python's verdict on a text (with `fold`, one already lower-cased as `vocabulary.lower` does)."""
        return self.compiled(fold).fullmatch(text) is not None

    def re2(self, fold: bool) -> str:
        return self.written("re2", fold)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __repr__(self) -> str:
        return repr(self.source)

    def __str__(self) -> str:  # as written in the YAML (explain)
        return f"'{self.source}'"
