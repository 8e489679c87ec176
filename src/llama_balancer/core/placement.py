"""Cache-aware placement: which server x instance (and llama-server slot) gets a request.

A pure decision, like ``routing.choose_route``: targets in, ``Place | Queue | Reject`` out;
no logging, no clock. The rules, in order:

1. **Eligible.** Invalid targets never. Suspect targets (a recent failure seen passively)
   only when no idle or busy target exists at all. No eligible target -> ``Reject(503)``:
   a production proxy should say "no healthy backend" rather than send into a known-dead
   server. (SPEC Part A's "first listed server" last resort stays in ``choose_route``.)
2. **Full.** ``capacity == 0`` (request-max reached, or no free slot where slots are known)
   means full. Every eligible target full -> ``Queue``. A suspect target never stands in
   for full healthy ones: those free up within a request's time, the queue is bounded.
3. **Overload guard** (SGLang's thresholds, judged per target): with ``floor`` the lowest
   load among the open targets, a target is overloaded when
   ``load - floor > balance_abs_threshold`` and ``load > balance_rel_threshold * floor``.
   SGLang tests only the most loaded worker and then drops cache affinity altogether; per
   target, a warm cache on a moderately loaded server is still used while the system as a
   whole is imbalanced. The least-loaded target is never overloaded.
4. **Sticky.** The identity's bound target, if open and not overloaded, wins when no
   target has a meaningful match or its own match is within ``sticky_margin_chars`` of the
   best one; a much longer match elsewhere (the user switched conversations) wins over it.
5. **Prefix.** The longest match among the non-overloaded targets, if meaningful:
   ``match >= max(min_match_chars, min_match_ratio * prompt_chars)``. Ties: lower load,
   then ``order``.
6. **Least-loaded.** Otherwise the lowest load; ties: longer match, idle before busy,
   then ``order``.

Remaining ties go to the earlier target in ``targets`` (list a server's instances in their
instance order). ``place`` never answers reason ``fallback``: that is the caller's, for a
model no pattern matches.

**Slot pinning**: on a llama-server target with known idle slots, the idle slot holding the
longest meaningful match of this prompt is pinned with ``id_slot``. Otherwise none: the
server then picks its best-matching idle slot itself, and pinning a slot without a match
would only override that judgement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence, Union

TargetStatus = Literal["idle", "busy", "invalid", "suspect"]
# The last four are the classic (SPEC Part A) policy's and the baselines' reasons.
Reason = Literal["sticky", "prefix", "least-loaded", "fallback", "round-robin", "free-instance", "idle", "last-resort"]


@dataclass(frozen=True)
class Target:
    """One server x instance the request may go to, as the state layer sees it now."""

    server: str
    instance: str
    order: int  # the server's position in the matched pattern's list
    status: TargetStatus
    load: int = 0  # fused in-flight load (signals.fuse_load)
    capacity: int | None = None  # free room (signals.free_capacity); None = unknown; 0 = full
    match_chars: int = 0  # prompt chars whose prefix this target has recently seen
    idle_slots: tuple[int, ...] = ()  # llama-server slot ids known idle
    slot_match: Mapping[int, int] = field(default_factory=dict)  # slot id -> matched chars
    slot_cached: Mapping[int, int] = field(default_factory=dict)  # idle slot id -> chars it holds (ours)

    @property
    def full(self) -> bool:
        return self.capacity is not None and self.capacity <= 0


@dataclass(frozen=True)
class PlacementKnobs:
    """Tuning of ``place``. Defaults suit small llama.cpp clusters (a few slots per server).

    ``balance_*``: SGLang's names and meaning, scaled down (its router defaults to 64 / 1.5
    for servers batching hundreds of requests); a gap of more than 2 requests is a lot for
    a server with 2-4 slots. ``min_match_ratio`` 0.1 mirrors llama-server's own
    ``--slot-prompt-similarity``: below a tenth of the prompt, a cache hit is not worth
    more than the load signal. ``sticky_margin_chars`` 256 (~64 tokens) is cheap to
    recompute, so identity stickiness survives small differences in match.
    """

    balance_abs_threshold: int = 2
    balance_rel_threshold: float = 1.5
    min_match_chars: int = 64
    min_match_ratio: float = 0.1
    sticky_margin_chars: int = 256
    pin_slots: bool = True


@dataclass(frozen=True)
class Place:
    server: str
    instance: str
    reason: Reason
    id_slot: int | None = None
    match_chars: int = 0  # for the access log: how much prompt cache the choice expects


@dataclass(frozen=True)
class Queue:
    """Every eligible target is full: wait for a place (the queue itself is state's)."""

    reason: str


@dataclass(frozen=True)
class Reject:
    status: int
    message: str


Decision = Union[Place, Queue, Reject]


def place(
    targets: Sequence[Target],
    sticky: tuple[str, str] | None,
    prompt_chars: int,
    knobs: PlacementKnobs = PlacementKnobs(),
) -> Decision:
    """Decide where a request goes; see the module docstring for the rules and their order."""
    pool = eligible(targets)
    if not pool:
        message = "no healthy backend for this model" if targets else "no backend for this model"
        return Reject(503, message)
    open_ = [t for t in pool if not t.full]
    if not open_:
        return Queue(f"all {len(pool)} eligible targets are full")
    floor = min(t.load for t in open_)
    fair = [t for t in open_ if not overloaded(t.load, floor, knobs)]
    threshold = match_threshold(prompt_chars, knobs)
    if knobs.pin_slots:
        slotted = _slot_placement(fair, sticky, threshold, knobs)
        if slotted is not None:
            return slotted
    best = min(fair, key=lambda t: (-t.match_chars, t.load, t.order))
    meaningful = best.match_chars >= threshold
    bound = _sticky_target(fair, sticky)
    if bound is not None and (
        not meaningful or bound.match_chars + knobs.sticky_margin_chars >= best.match_chars
    ):
        return _place(bound, "sticky", threshold, knobs)
    if meaningful:
        return _place(best, "prefix", threshold, knobs)
    lightest = min(open_, key=lambda t: (t.load, -t.match_chars, t.status != "idle", t.order))
    return _place(lightest, "least-loaded", threshold, knobs)


def eligible(targets: Sequence[Target]) -> list[Target]:
    """Idle and busy targets; suspect ones only when there are none of those."""
    healthy = [t for t in targets if t.status in ("idle", "busy")]
    return healthy or [t for t in targets if t.status == "suspect"]


def overloaded(load: int, floor: int, knobs: PlacementKnobs) -> bool:
    """SGLang's test: too far above the least-loaded target, absolutely and relatively."""
    return load - floor > knobs.balance_abs_threshold and load > knobs.balance_rel_threshold * floor


def match_threshold(prompt_chars: int, knobs: PlacementKnobs) -> int:
    """Matched chars from which a cache hit counts (never below 1: no match never counts)."""
    ratio = knobs.min_match_ratio * max(prompt_chars, 0)
    return max(knobs.min_match_chars, math.ceil(ratio), 1)


def pick_slot(target: Target, threshold: int) -> int | None:
    """The idle slot with the longest match of at least ``threshold`` (lowest id on ties).

    Without such a match the prompt still gets a slot we choose, so that we know where it
    lives next turn: an idle slot we never pinned (its cache is nobody's we know of), else
    the idle slot whose cache matters least to this prompt.
    """
    idle = [slot for slot in target.idle_slots if slot >= 0]
    if not idle:
        return None
    best = min(idle, key=lambda slot: (-target.slot_match.get(slot, 0), slot))
    if target.slot_match.get(best, 0) >= threshold:
        return best
    unused = [slot for slot in idle if slot not in target.slot_match]
    if unused:
        return min(unused)
    return min(idle, key=lambda slot: (target.slot_match[slot], slot))


def _slot_placement(fair: list[Target], sticky: tuple[str, str] | None, threshold: int,
                    knobs: PlacementKnobs) -> Place | None:
    """Where slots are known: an idle slot this prompt continues, else a slot nobody uses.

    A prompt *continues* a slot when it matches all the slot holds but for
    ``sticky_margin_chars``: its own conversation, one turn on. Pinning any other slot that
    we filled overwrites someone's longer prompt, which they will miss next turn and take
    back from us; two conversations sharing a slot then evict each other every turn. So a
    slot we never pinned, anywhere, comes before a merely shared prefix (a system prompt)
    in a slot someone else fills. None: no such slot, the rules below decide.
    """
    best: tuple[tuple[int, int, int], Target, int] | None = None
    for target in fair:
        for slot in target.idle_slots:
            matched = target.slot_match.get(slot, 0)
            held = target.slot_cached.get(slot)
            if slot >= 0 and held is not None and matched >= threshold and held - matched <= knobs.sticky_margin_chars:
                key = (-matched, target.load, target.order)
                if best is None or key < best[0]:
                    best = (key, target, slot)
    if best is not None:
        _, target, slot = best
        reason: Reason = "sticky" if (target.server, target.instance) == sticky else "prefix"
        return Place(target.server, target.instance, reason, slot, target.match_chars)
    unused = [(target, min(fresh)) for target in fair
              if (fresh := [s for s in target.idle_slots if s >= 0 and s not in target.slot_match
                            and s not in target.slot_cached])]
    if unused:  # the identity's own server first, then the least loaded
        target, slot = min(unused, key=lambda pair: ((pair[0].server, pair[0].instance) != sticky, pair[0].load,
                                                     -pair[0].match_chars, pair[0].order))
        reason = "sticky" if (target.server, target.instance) == sticky else "least-loaded"
        return Place(target.server, target.instance, reason, slot, target.match_chars)
    return None


def _sticky_target(fair: list[Target], sticky: tuple[str, str] | None) -> Target | None:
    if sticky is None:
        return None
    return next((t for t in fair if (t.server, t.instance) == sticky), None)


def _place(target: Target, reason: Reason, threshold: int, knobs: PlacementKnobs) -> Place:
    slot = pick_slot(target, threshold) if knobs.pin_slots else None
    return Place(target.server, target.instance, reason, slot, target.match_chars)
