"""Baseline policies the routing bench compares ours against: round-robin and least-loaded.

Same inputs and outcomes as ``placement.place`` (full everywhere -> Queue, nothing healthy
-> Reject), no cache awareness and no stickiness.
"""
from __future__ import annotations

from typing import Sequence

from .placement import Decision, Place, Queue, Reject, Target, eligible


def _room(targets: Sequence[Target]) -> list[Target] | Decision:
    pool = eligible(targets)
    if not pool:
        return Reject(503, "no healthy backend for this model" if targets else "no backend for this model")
    free = [t for t in pool if not t.full]
    return free if free else Queue("every backend for this model is full")


def round_robin(targets: Sequence[Target], turn: int) -> Decision:
    """The ``turn``-th target with room, cycling (the caller advances ``turn``)."""
    free = _room(targets)
    if not isinstance(free, list):
        return free
    chosen = free[turn % len(free)]
    return Place(chosen.server, chosen.instance, "round-robin")


def least_loaded(targets: Sequence[Target]) -> Decision:
    """Fewest requests in flight; ties to the server listed first."""
    free = _room(targets)
    if not isinstance(free, list):
        return free
    chosen = min(free, key=lambda t: (t.load, t.order))
    return Place(chosen.server, chosen.instance, "least-loaded")
