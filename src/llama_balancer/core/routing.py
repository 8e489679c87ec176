"""The routing policy of SPEC Part A as a pure function: a snapshot in, a decision out.

It must not log, read clocks or touch sockets; the caller passes ``now`` and the views.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

from .frozen import quick_init
from .health import Status
from .models import instances_of

Reason = Literal["fallback", "sticky", "free-instance", "idle", "last-resort"]


@dataclass(frozen=True)
class ServerView:
    """What the policy may know of one server at decision time."""

    name: str
    status: Status
    total_inflight: int = 0
    request_max: int | None = None
    served: tuple[str, ...] | None = None  # model ids from /v1/models; None = not known yet
    inflight: Mapping[str, int] = field(default_factory=dict)  # per instance

    @property
    def full(self) -> bool:
        return self.request_max is not None and self.total_inflight >= self.request_max

    def instances(self, model: str) -> list[str]:
        """Instances of ``model`` here; an undiscovered server is assumed to serve it as asked."""
        if self.served is None:
            return [model]
        return instances_of(model, self.served)


@quick_init
@dataclass(frozen=True)
class StickyBinding:
    server: str
    instance: str
    updated_at: float


@dataclass(frozen=True)
class Route:
    server: str
    instance: str
    reason: Reason


def choose_route(
    model: str,
    candidates: list[str] | None,
    fallback: str,
    views: Mapping[str, ServerView],
    sticky: StickyBinding | None,
    now: float,
    sticky_ttl_s: float,
) -> Route:
    """Pick server and instance for ``model`` among ``candidates`` (the matched pattern's list).

    Order of preference: a live sticky binding; the first usable server in listed order
    (a free instance there, else the model as asked if the server is idle); else the first
    listed server as a last resort. No matching pattern -> the fallback server.
    """
    if not candidates:
        return Route(fallback, model, "fallback")
    if sticky is not None and _sticky_usable(sticky, model, candidates, views, now, sticky_ttl_s):
        return Route(sticky.server, sticky.instance, "sticky")
    for name in candidates:
        view = views[name]
        if view.status == "invalid" or view.full:
            continue
        instances = view.instances(model)
        if not instances:
            continue
        free = next((inst for inst in instances if view.inflight.get(inst, 0) == 0), None)
        if free is not None:
            return Route(name, free, "free-instance")
        if view.status == "idle":
            # As asked, unless the server lists only numbered copies: then its first copy.
            return Route(name, model if model in instances else instances[0], "idle")
    return Route(candidates[0], model, "last-resort")


def _sticky_usable(
    sticky: StickyBinding,
    model: str,
    candidates: list[str],
    views: Mapping[str, ServerView],
    now: float,
    ttl: float,
) -> bool:
    if now - sticky.updated_at > ttl or sticky.server not in candidates:
        return False
    view = views[sticky.server]
    if view.status == "invalid" or view.full:
        return False
    return view.served is None or sticky.instance in view.instances(model)
