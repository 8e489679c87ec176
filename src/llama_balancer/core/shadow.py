"""Which ``models`` patterns can never match: every name one fullmatches is taken by the
patterns before it (the first fullmatch wins), so its server list is never used.

Pure. Each pattern becomes an automaton over characters (Thompson's construction from
Python's own parse of it); a later pattern is shadowed when no string it accepts escapes
the earlier ones, which a search over pairs of state sets decides exactly. What is not a
regular language, or not modelled here — back-references, look-arounds, ``\\b``, anchors
inside the pattern, case-insensitive or ASCII-only matching, possessive or atomic groups —
is left out: such a pattern is never reported, and never counted as shadowing another
(so a report is always true; some shadowing goes unreported). A search that grows past its
budget gives no verdict either.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from functools import cache
from typing import Any, Iterable, Sequence

try:  # Python 3.11+
    from re import _constants as _c, _parser as _p  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - older layouts
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _p  # type: ignore[no-redef]

MAX_CODE = 0x10FFFF
MAX_STATES = 4000  # automaton size per pattern (a{1,500} grows it fast)
SEARCH_BUDGET = 20000  # pairs of state sets visited per question

Charset = tuple[tuple[int, int], ...]  # sorted, disjoint, merged intervals of code points


@dataclass(frozen=True)
class Shadowed:
    """``pattern`` can never match: the patterns in ``by`` (earlier ones) take every name it would."""

    pattern: str
    by: tuple[str, ...]


class _Unsupported(Exception):
    pass


def shadowed_patterns(patterns: Sequence[str]) -> list[Shadowed]:
    """The patterns, in order, that earlier ones shadow (see the module's doc)."""
    automata: list[tuple[str, _Nfa]] = []
    found: list[Shadowed] = []
    for pattern in patterns:
        nfa = _compile(pattern)
        if nfa is None:
            continue
        if automata and nfa.accepts_something():
            by = _covering(nfa, automata)
            if by is not None:
                found.append(Shadowed(pattern, by))
        automata.append((pattern, nfa))
    return found


def _covering(later: _Nfa, earlier: list[tuple[str, _Nfa]]) -> tuple[str, ...] | None:
    """The fewest earlier patterns found that together take every name ``later`` accepts."""
    if _escapes(later, _Nfa.union([nfa for _, nfa in earlier])) is not False:
        return None
    for pattern, nfa in earlier:
        if _escapes(later, nfa) is False:
            return (pattern,)
    kept = list(earlier)
    for item in list(kept):  # drop those the rest can do without
        rest = [other for other in kept if other is not item]
        if rest and _escapes(later, _Nfa.union([nfa for _, nfa in rest])) is False:
            kept = rest
    return tuple(pattern for pattern, _ in kept)


# -- character sets

def _merge(intervals: Iterable[tuple[int, int]]) -> Charset:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def _complement(charset: Charset) -> Charset:
    out, start = [], 0
    for lo, hi in charset:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE:
        out.append((start, MAX_CODE))
    return tuple(out)


def _contains(charset: Charset, code: int) -> bool:
    i = bisect_right(charset, (code, MAX_CODE + 1)) - 1
    return i >= 0 and charset[i][0] <= code <= charset[i][1]


@cache
def _all_characters() -> str:
    return "".join(map(chr, range(MAX_CODE + 1)))


@cache
def _category(name: str) -> Charset:
    """\\d, \\s, \\w (and their negations) as Python's Unicode matching has them."""
    base = {"DIGIT": r"\d+", "SPACE": r"\s+", "WORD": r"\w+"}
    negated = name.startswith("NOT_")
    key = name.removeprefix("NOT_")
    if key not in base:
        raise _Unsupported(name)
    found = _merge((m.start(), m.end() - 1) for m in re.finditer(base[key], _all_characters()))
    return _complement(found) if negated else found


def _charset(items: list[tuple[Any, Any]]) -> Charset:
    negate, parts = False, []
    for op, av in items:
        if op is _c.NEGATE:
            negate = True
        elif op is _c.LITERAL:
            parts.append((av, av))
        elif op is _c.RANGE:
            parts.append(av)
        elif op is _c.CATEGORY:
            parts.extend(_category(str(av).removeprefix("CATEGORY_")))
        else:
            raise _Unsupported(str(op))
    merged = _merge(parts)
    return _complement(merged) if negate else merged


# -- automata

class _Nfa:
    """States 0..n-1; ``moves[s]``: (charset, target); ``eps[s]``: targets without a character."""

    def __init__(self) -> None:
        self.moves: list[list[tuple[Charset, int]]] = []
        self.eps: list[list[int]] = []
        self.starts: list[int] = []
        self.accepts: frozenset[int] = frozenset()
        self.dotall = False

    def new(self) -> int:
        if len(self.moves) >= MAX_STATES:
            raise _Unsupported("too many states")
        self.moves.append([])
        self.eps.append([])
        return len(self.moves) - 1

    @staticmethod
    def union(parts: list["_Nfa"]) -> "_Nfa":
        out = _Nfa()
        accepts: set[int] = set()
        for part in parts:
            offset = len(out.moves)
            out.moves += [[(cs, t + offset) for cs, t in moves] for moves in part.moves]
            out.eps += [[t + offset for t in targets] for targets in part.eps]
            out.starts += [s + offset for s in part.starts]
            accepts |= {s + offset for s in part.accepts}
        out.accepts = frozenset(accepts)
        return out

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        seen = set(states)
        todo = list(seen)
        while todo:
            for target in self.eps[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return frozenset(seen)

    def accepts_something(self) -> bool:
        seen = set(self.starts)
        todo = list(seen)
        while todo:
            state = todo.pop()
            if state in self.accepts:
                return True
            for target in self.eps[state] + [t for cs, t in self.moves[state] if cs]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return False

    # Thompson's construction over Python's parse tree
    def sequence(self, items: Iterable[tuple[Any, Any]], state: int) -> int:
        for op, av in items:
            state = self.node(op, av, state)
        return state

    def edge(self, state: int, charset: Charset) -> int:
        target = self.new()
        self.moves[state].append((charset, target))
        return target

    def node(self, op: Any, av: Any, state: int) -> int:
        if op is _c.LITERAL:
            return self.edge(state, ((av, av),))
        if op is _c.NOT_LITERAL:
            return self.edge(state, _complement(((av, av),)))
        if op is _c.ANY:
            return self.edge(state, ((0, MAX_CODE),) if self.dotall else _complement(((10, 10),)))
        if op is _c.IN:
            return self.edge(state, _charset(av))
        if op is _c.BRANCH:
            end = self.new()
            for alternative in av[1]:
                begin = self.new()
                self.eps[state].append(begin)
                self.eps[self.sequence(alternative, begin)].append(end)
            return end
        if op is _c.SUBPATTERN:
            _group, add_flags, del_flags, inner = av
            if add_flags or del_flags:
                raise _Unsupported("inline flags")
            return self.sequence(inner, state)
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            return self.repeat(av, state)
        raise _Unsupported(str(op))

    def repeat(self, av: tuple[int, int, Any], state: int) -> int:
        low, high, inner = av
        for _ in range(low):
            state = self.sequence(inner, state)
        if high is _c.MAXREPEAT or high == _c.MAXREPEAT:
            loop = self.new()
            self.eps[state].append(loop)
            self.eps[self.sequence(inner, loop)].append(loop)
            return loop
        ends = [state]
        for _ in range(high - low):
            state = self.sequence(inner, state)
            ends.append(state)
        end = self.new()
        for each in ends:
            self.eps[each].append(end)
        return end


_UNMODELLED_FLAGS = re.IGNORECASE | re.ASCII | re.LOCALE
_BEGIN = {getattr(_c, "AT_BEGINNING"), getattr(_c, "AT_BEGINNING_STRING")}
_END = {getattr(_c, "AT_END"), getattr(_c, "AT_END_STRING")}


def _compile(pattern: str) -> _Nfa | None:
    """The automaton of what ``pattern`` fullmatches; None when it is not modelled here."""
    try:
        re.compile(pattern)
        parsed = _p.parse(pattern)
        if parsed.state.flags & _UNMODELLED_FLAGS:
            return None
        items = list(parsed)
        # With fullmatch, a leading ^ or \A and a trailing $ or \Z change nothing.
        if items and items[0][0] is _c.AT and items[0][1] in _BEGIN:
            items = items[1:]
        if items and items[-1][0] is _c.AT and items[-1][1] in _END:
            items = items[:-1]
        nfa = _Nfa()
        nfa.dotall = bool(parsed.state.flags & re.DOTALL)
        start = nfa.new()
        nfa.starts = [start]
        nfa.accepts = frozenset({nfa.sequence(items, start)})
        return nfa
    except (_Unsupported, re.error, RecursionError, TypeError, ValueError):
        return None


def _escapes(later: _Nfa, earlier: _Nfa) -> bool | None:
    """True when ``later`` accepts a string ``earlier`` does not; None when undecided."""
    start = (later.closure(later.starts), earlier.closure(earlier.starts))
    seen = {start}
    todo = [start]
    while todo:
        ours, theirs = todo.pop()
        if not later.accepts.isdisjoint(ours) and earlier.accepts.isdisjoint(theirs):
            return True
        our_moves = [move for state in ours for move in later.moves[state]]
        if not our_moves:
            continue
        their_moves = [move for state in theirs for move in earlier.moves[state]]
        points = sorted({edge for charset, _ in our_moves + their_moves
                         for lo, hi in charset for edge in (lo, hi + 1)})
        for code in points[:-1]:  # each piece between two points is inside or outside each set
            step = [t for charset, t in our_moves if _contains(charset, code)]
            if not step:
                continue
            key = (later.closure(step),
                   earlier.closure(t for charset, t in their_moves if _contains(charset, code)))
            if key not in seen:
                if len(seen) >= SEARCH_BUDGET:
                    return None
                seen.add(key)
                todo.append(key)
    return False
