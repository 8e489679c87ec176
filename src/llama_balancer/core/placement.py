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
4. **Slots.** Where llama-server slots are known and some fair target has one idle, the
   slot itself is chosen across targets (``_slot_placement``: the slot the prompt
   continues, a slot nobody uses, the longest cached prefix, else the slot whose loss
   matters least), since a slot holds one prompt and the server's memory of past prompts
   no longer says where they are. Rules 5-7 decide where slots are unknown.
5. **Sticky.** The identity's bound target, if open and not overloaded, wins when no
   target has a meaningful match or its own match is within ``sticky_margin_chars`` of the
   best one; a much longer match elsewhere (the user switched conversations) wins over it.
6. **Prefix.** The longest match among the non-overloaded targets, if meaningful:
   ``match >= max(min_match_chars, min_match_ratio * prompt_chars)``. Ties: lower load,
   then ``order``.
7. **Least-loaded.** Otherwise the lowest load; ties: longer match, idle before busy,
   then ``order``.

Remaining ties go to the earlier target in ``targets`` (list a server's instances in their
instance order). ``place`` never answers reason ``fallback``: that is the caller's, for a
model no pattern matches.

**Slot pinning**: a slot chosen by rule 4 is pinned with ``id_slot``; after rules 5-7, on
a target with known idle slots, ``pick_slot`` chooses one. Always pinning keeps our memory
of what each slot holds exact, which the next decision depends on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence, Union

from .frozen import quick_init

TargetStatus = Literal["idle", "busy", "invalid", "suspect"]
# The last four are the classic (SPEC Part A) policy's and the baselines' reasons.
Reason = Literal["sticky", "prefix", "least-loaded", "spare-slot", "fallback",
                 "round-robin", "free-instance", "idle", "last-resort"]


@quick_init
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
    slot_spare: Mapping[int, int] = field(default_factory=dict)  # idle slot id -> of those, chars other slots hold too
    busy_match: int = 0  # the longest match among the slots our requests keep busy now
    busy_wait_s: float | None = None  # how long that slot should stay busy (None: unknown)
    prefill_s_per_char: float | None = None  # the server's learnt prefill pace (None: unknown)

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
    hold_min_gain_ratio: float = 0.25


@quick_init
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
    waiting_for_cache: bool = False  # not full: holding out for a busy slot's cache


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
    hold_s: float = 0.0,
    hold_max_s: float = 0.0,
) -> Decision:
    """Decide where a request goes; see the module docstring for the rules and their order.

    ``hold_s``: how much longer the request may wait for a busy slot that holds much more of
    its prompt; ``hold_max_s``: how much longer where the wait saves more prefill than it
    costs (``_worth_holding``); ``Queue`` then, with ``waiting_for_cache`` set.
    """
    pool = eligible(targets)
    if not pool:
        message = "no healthy backend for this model" if targets else "no backend for this model"
        return Reject(503, message)
    open_ = pool if len(pool) == 1 and (pool[0].capacity is None or pool[0].capacity > 0) else \
        [t for t in pool if t.capacity is None or t.capacity > 0]  # not t.full
    if not open_:
        return Queue(f"all {len(pool)} eligible targets are full")
    if len(open_) == 1:
        fair = open_  # the least-loaded target is never overloaded
    else:
        floor = min(t.load for t in open_)
        fair = [t for t in open_ if not overloaded(t.load, floor, knobs)]
    threshold = match_threshold(prompt_chars, knobs)
    # Rules about slots apply only where some target knows idle slots or a busy one of ours.
    if knobs.pin_slots and _knows_slots(pool):
        if (hold_s > 0 or hold_max_s > 0) and \
                _worth_holding(pool, fair, prompt_chars, threshold, knobs, hold_s, hold_max_s):
            return Queue("waiting for the busy slot that holds this prompt", waiting_for_cache=True)
        slotted = _slot_placement(fair, sticky, threshold, knobs)
        if slotted is not None:
            return slotted
    best = fair[0] if len(fair) == 1 else min(fair, key=lambda t: (-t.match_chars, t.load, t.order))
    meaningful = best.match_chars >= threshold
    bound = _sticky_target(fair, sticky)
    if bound is not None and (
        not meaningful or bound.match_chars + knobs.sticky_margin_chars >= best.match_chars
    ):
        return _place(bound, "sticky", threshold, knobs)
    if meaningful:
        return _place(best, "prefix", threshold, knobs)
    lightest = open_[0] if len(open_) == 1 else \
        min(open_, key=lambda t: (t.load, -t.match_chars, t.status != "idle", t.order))
    return _place(lightest, "least-loaded", threshold, knobs)


def _knows_slots(pool: Sequence[Target]) -> bool:
    """Whether some target knows idle slots or a busy one of ours (a loop: cheaper than any())."""
    for t in pool:
        if t.idle_slots or t.busy_wait_s is not None:
            return True
    return False


def eligible(targets: Sequence[Target]) -> list[Target]:
    """Idle and busy targets; suspect ones only when there are none of those."""
    if len(targets) == 1 and (targets[0].status == "idle" or targets[0].status == "busy"):
        return list(targets)
    healthy = [t for t in targets if t.status == "idle" or t.status == "busy"]
    return healthy or [t for t in targets if t.status == "suspect"]


def overloaded(load: int, floor: int, knobs: PlacementKnobs) -> bool:
    """SGLang's test: too far above the least-loaded target, absolutely and relatively."""
    return load - floor > knobs.balance_abs_threshold and load > knobs.balance_rel_threshold * floor


def match_threshold(prompt_chars: int, knobs: PlacementKnobs) -> int:
    """Matched chars from which a cache hit counts (never below 1: no match never counts)."""
    ratio = knobs.min_match_ratio * prompt_chars if prompt_chars > 0 else 0.0
    return max(knobs.min_match_chars, math.ceil(ratio), 1)


def pick_slot(target: Target, threshold: int) -> int | None:
    """The idle slot with the longest match of at least ``threshold`` (lowest id on ties).

    Without such a match the prompt still gets a slot we choose, so that we know where it
    lives next turn: an idle slot we never pinned (its cache is nobody's we know of), else
    the idle slot whose cache matters least to this prompt.
    """
    if not target.idle_slots:
        return None
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
    """Where slots are known, the slot itself is chosen, across all fair targets:

    1. an idle slot this prompt *continues*: it matches all the slot holds but for
       ``sticky_margin_chars`` (its own conversation, one turn on);
    2. an idle slot we never pinned (its cache is nobody's we know of), the identity's own
       server first, then the least loaded;
    3. the idle slot holding the longest meaningful prefix of the prompt (a shared system
       prompt in someone else's slot);
    4. no idle slot holds a meaningful part of it: the idle slot whose overwriting loses
       least, i.e. whose prompt other slots (``slot_spare``) or this prompt hold most of,
       then the one with the smallest remainder.

    Pinning a slot another conversation fills overwrites its prompt, which it misses next
    turn; 1 and 2 come first so that live conversations keep their slots. Under churn (more
    conversations than slots) 3 and 4 keep each shared prefix alive somewhere: choosing by
    server (its memory of everything ever sent there) instead would pick a server whose
    slots no longer hold the prefix and overwrite the last slot that did. Ties: lower load,
    then ``order``. None: no idle slot is known, or a target without slot information holds
    a longer meaningful match; the target-level rules decide.
    """
    for target in fair:
        if target.idle_slots:
            break
    else:
        return None
    idle = [(target, slot) for target in fair for slot in target.idle_slots if slot >= 0]
    if not idle:
        return None

    def chosen(target: Target, slot: int, reason: Reason) -> Place:
        if reason == "prefix" and (target.server, target.instance) == sticky:
            reason = "sticky"
        return Place(target.server, target.instance, reason, slot, target.match_chars)

    matched = [(t, s, t.slot_match.get(s, 0)) for t, s in idle if t.slot_match.get(s, 0) >= threshold]
    continued = [(t, s, m) for t, s, m in matched
                 if s in t.slot_cached and t.slot_cached[s] - m <= knobs.sticky_margin_chars]
    if continued:
        target, slot, _ = min(continued, key=lambda c: (-c[2], c[0].load, c[0].order, c[1]))
        return chosen(target, slot, "prefix")
    # A target without known idle slots (a vLLM server, say) may hold more of the prompt.
    elsewhere = max((t.match_chars for t in fair if not any(s >= 0 for s in t.idle_slots)), default=0)
    if elsewhere >= threshold and elsewhere > max((m for _, _, m in matched), default=0):
        return None
    fresh = [(t, s) for t, s in idle if s not in t.slot_match and s not in t.slot_cached]
    if fresh:
        target, slot = min(fresh, key=lambda c: ((c[0].server, c[0].instance) != sticky, c[0].load,
                                                 -c[0].match_chars, c[0].order, c[1]))
        return chosen(target, slot, "sticky" if (target.server, target.instance) == sticky else "least-loaded")
    if matched:
        target, slot, _ = min(matched, key=lambda c: (-c[2], c[0].load, c[0].order, c[1]))
        return chosen(target, slot, "prefix")

    def loss(pair: tuple[Target, int]) -> tuple[int, int, int, int, int]:
        target, slot = pair  # kept: what of the slot's prompt survives, elsewhere or in ours
        kept = max(target.slot_spare.get(slot, 0), target.slot_match.get(slot, 0))
        return (-kept, target.slot_cached.get(slot, 0) - kept, target.load, target.order, slot)

    target, slot = min(idle, key=loss)
    return chosen(target, slot, "spare-slot")


def _worth_holding(pool: list[Target], fair: list[Target], prompt_chars: int, threshold: int,
                   knobs: PlacementKnobs, hold_s: float, hold_max_s: float) -> bool:
    """Wait for a busy slot rather than take an idle one: when it holds at least
    ``hold_min_gain_ratio`` of the prompt more than any idle slot (or a target without slot
    information) does, and should free in time. In time is within ``hold_s``, whatever the
    servers' pace; or, where the prefill pace is known (``prefill_s_per_char``), within
    ``hold_max_s`` if the wait plus the prefill left after it costs less than taking the
    cheapest idle place: the part of the prompt it does not hold, plus the part of its
    previous prompt that is lost with it (held nowhere else), at that server's pace.

    Taking the idle slot costs this prompt's prefill and evicts the prompt that slot held,
    which its owner and every later request sharing it then recompute: a cached prefix is
    worth more than one prefill. On a slow server (a bigger model, a CPU box, long prompts)
    a slot stays busy for seconds, beyond any fixed horizon, and yet the prefill a wait
    saves there is seconds too; a horizon in seconds of prefill keeps each shared prompt
    where it lives instead of overwriting another group's only copy elsewhere. The expected
    wait is the slot's learnt turnover (``state/pace.py``; unknown -> no hold; overrun -> as
    late again as it is already, ``state/targets._best_busy_slot``), so a slot busy with a
    long generation is not waited for long.
    """
    # Only a busy slot that frees in time and holds a meaningful match could be worth it.
    horizon = max(hold_s, hold_max_s)
    waits = [t for t in pool if t.busy_wait_s is not None and t.busy_wait_s <= horizon
             and t.busy_match >= threshold]
    if not waits:
        return False
    places = _idle_places(fair)
    here = max((matched for _, matched, _ in places), default=0)
    need = max(threshold, knobs.hold_min_gain_ratio * prompt_chars)
    for t in waits:
        if t.busy_match - here < need:
            continue
        wait = t.busy_wait_s or 0.0
        if wait <= hold_s:
            return True
        pace = t.prefill_s_per_char
        if pace is None or wait > hold_max_s:
            continue
        taking = min(((target.prefill_s_per_char or pace) * (prompt_chars - matched + lost)
                      for target, matched, lost in places), default=None)
        if taking is not None and wait + pace * (prompt_chars - t.busy_match) < taking:
            return True
    return False


def _idle_places(fair: list[Target]) -> list[tuple[Target, int, int]]:
    """Each place the request could take now, as (target, prompt chars it holds, chars of
    another prompt lost by taking it): every known idle slot, and each target without slot
    information (its server-level match; what it would evict is unknown)."""
    places: list[tuple[Target, int, int]] = []
    for target in fair:
        slots = [slot for slot in target.idle_slots if slot >= 0]
        if not slots:
            places.append((target, target.match_chars, 0))
            continue
        for slot in slots:
            matched = target.slot_match.get(slot, 0)
            kept = max(target.slot_spare.get(slot, 0), matched)
            places.append((target, matched, max(target.slot_cached.get(slot, 0) - kept, 0)))
    return places


def _sticky_target(fair: list[Target], sticky: tuple[str, str] | None) -> Target | None:
    if sticky is None:
        return None
    server, instance = sticky
    for target in fair:
        if target.server == server and target.instance == instance:
            return target
    return None


def _place(target: Target, reason: Reason, threshold: int, knobs: PlacementKnobs) -> Place:
    slot = pick_slot(target, threshold) if knobs.pin_slots and target.idle_slots else None
    return Place(target.server, target.instance, reason, slot, target.match_chars)
