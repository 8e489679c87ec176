"""Turn live state into the policy's plain-data view: one Target per server x instance.

Own in-flight counts are fused with polled signals (which see other clients, but late);
slots the balancer itself pinned and that are still running count as busy even if the
last poll said idle.
"""
from __future__ import annotations

from typing import Iterable

from ..core.config import RoutingOptions
from ..core.placement import Target
from ..core.prefix import Fingerprint
from ..core.signals import BackendLoad, SlotsInfo, free_capacity, fuse_load
from .affinity import AffinityStore
from .backend import BackendState
from .registry import Registry


def build_targets(
    registry: Registry,
    affinity: AffinityStore,
    candidates: Iterable[str],
    model: str,
    fp: Fingerprint,
    now: float,
    routing: RoutingOptions,
) -> list[Target]:
    states, served = [], []  # loops, not comprehensions: each of those is a function call on 3.11
    for name in candidates:
        state = registry.state(name)
        states.append(state)
        served.append(state.instances(model))
    if not any(served):
        # No listed server names the model (a plain llama-server answers whatever is asked,
        # llama-swap may load it on demand): the pattern's servers take it as asked.
        served = [[model]] * len(states)
    targets: list[Target] = []
    for order, state in enumerate(states):
        instances = served[order]
        for instance in instances:
            targets.append(_target(state, instance, order, affinity, fp, now, routing, len(instances)))
    return targets


def _target(state: BackendState, instance: str, order: int, affinity: AffinityStore, fp: Fingerprint,
            now: float, routing: RoutingOptions, copies: int) -> Target:
    load_at = state.load_at
    fresh = load_at is not None and now - load_at <= routing.poll_max_age_s
    slots = state.slots.for_model(instance) if (state.slots is not None and fresh) else None
    own = state.inflight.get(instance, 0)
    polled: BackendLoad | None
    if slots is not None:
        waiting = state.load.waiting if (state.load is not None and copies == 1) else 0
        polled = BackendLoad(slots.busy, waiting, slots.total, slots.idle)
    else:
        polled = state.load if copies == 1 else None
    if polled is None:  # fuse_load's answer without a poll
        load = own if own > 0 else 0
    else:
        age = now - load_at if load_at is not None else float("nan")
        own_at_poll = state.inflight_at_poll.get(instance, 0)
        if slots is not None and (state.remote_pinned or state.remote_pinned_at_poll):
            # Other replicas' pinned requests (shared state) count as ours do: busy now, and
            # not another client's where the poll saw them and they ended since.
            own, own_at_poll = own + _remote(state.remote_pinned, slots), own_at_poll + _remote(
                state.remote_pinned_at_poll, slots)
        load = fuse_load(own, polled, age, routing.poll_max_age_s, own_at_poll)
    match_chars = affinity.match_chars(state.name, instance, fp)
    status = state.health(now)
    if slots is None:
        request_max = state.limit  # free_capacity without slots
        capacity = None if request_max is None else max(request_max - state.counted, 0)
        return Target(state.name, instance, order, status, load, capacity, match_chars)  # type: ignore[arg-type]
    capacity = free_capacity(state.limit, state.counted, slots.total, load)
    # Idle: what the poll saw idle, plus slots it saw busy only with our own pinned requests
    # (ended since, unless pinned again); minus the slots our requests hold now.
    pinned, pinned_at_poll, remote = state.pinned, state.pinned_at_poll, state.remote_pinned
    idle = () if state.clears_idle_slots else tuple(  # no pinning where idle slots are emptied
        s.id for s in slots.slots
        if s.id not in pinned and s.id not in remote and (not s.processing or s.id in pinned_at_poll))
    busy_match, busy_wait = _best_busy_slot(state, affinity, idle, fp, now)
    return Target(
        server=state.name,
        instance=instance,
        order=order,
        status=status,  # type: ignore[arg-type]
        load=load,
        capacity=capacity,
        match_chars=match_chars,
        idle_slots=idle,
        slot_match=affinity.slot_match(state.name, idle, fp) if idle else {},
        slot_cached=affinity.slot_cached(state.name, idle) if idle else {},
        slot_spare=affinity.slot_spare(state.name, idle) if idle else {},
        busy_match=busy_match,
        busy_wait_s=busy_wait,
        prefill_s_per_char=state.pace.prefill_s_per_char,
    )


def _remote(pins: dict[int, int], slots: SlotsInfo) -> int:
    return sum(pins.get(slot.id, 0) for slot in slots.slots) if pins else 0


def _best_busy_slot(state: BackendState, affinity: AffinityStore, idle: tuple[int, ...], fp: Fingerprint,
                    now: float) -> tuple[int, float | None]:
    """The longest match among the busy slots our own requests hold, and how long that slot
    should stay busy: its request's expected time on it (``Pace.expected_s``) minus the time
    it has run; None when unknown.

    A request past its expected time is late by as much again as it is late already: the
    estimate grows as the overrun does, so a short overrun (the pace learnt a little low, as
    it does while prompts grow) is still waited for, and a long generation soon is not (the
    hold's horizon and its cost test, re-judged at every re-check). Reading every overrun as
    unknown made a request that had held for its slot give up just before it freed, and
    evict another group's prompt elsewhere (seen on real llama-servers, skew variant)."""
    ours = tuple(slot for slot in state.pinned_since if slot not in idle)
    if not ours:
        return 0, None
    matches = affinity.slot_match(state.name, ours, fp)
    if not matches:
        return 0, None
    slot = max(matches, key=lambda s: (matches[s], -s))
    expected = state.pace.expected_s(state.pinned_uncached.get(slot))
    if expected is None:
        return matches[slot], None
    return matches[slot], abs(expected - (now - state.pinned_since[slot]))
