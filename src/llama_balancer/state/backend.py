"""One backend as the balancer sees it (``BackendState``: health window, discovered models,
polled load, slots we pinned, learnt pace, passive health) and the one way its in-flight
counts change (``InflightSlot``).

Counts change only through ``async with registry.slot(server, instance)``, so every exit
path (error, cancellation, client gone, backend reset) gives the count back. Where replicas
share limits (io/shared_state.py), the slot also holds the request's lease.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.config import ServerConfig
from ..core.health import HealthSample, Status, judge
from ..core.models import instances_of
from ..core.profile import BackendProfile
from ..core.signals import BackendLoad, SlotsInfo
from .leases import Lease
from .pace import Pace

INSTANCES_REMEMBERED = 256  # model names per backend whose instance list is kept


@dataclass(frozen=True)
class PollMark:
    inflight: dict[str, int]
    pinned: frozenset[int]
    remote: dict[int, int] = field(default_factory=dict)  # other replicas' pins (shared state)


@dataclass
class Discovery:
    """What polls found out about a server beyond its load: whether an /llmhealth agent
    answers, and what was last announced in the log (so each change is logged once)."""

    agent_seen: bool = False  # an agent answered since the address was configured
    agent_failing: bool = False  # /llmhealth answers 5xx: a broken agent or a loading server, probed every poll
    polls: int = 0  # polls so far: agent probes are spaced out while none has answered
    models_polled: bool = False  # a /v1/models poll finished (answered or not)
    announced: BackendProfile | None = None
    warned: bool = False  # the "agent does not answer" warning of this failure streak


@dataclass
class BackendState:
    name: str
    server: ServerConfig
    samples: deque[HealthSample]
    last: dict[str, Any] | None = None
    served: tuple[str, ...] | None = None
    served_at: float | None = None
    inflight: dict[str, int] = field(default_factory=dict)
    total: int = 0
    kind: str = "auto"  # the server's kind; "auto" resolved by the first signal poll
    discovery: Discovery = field(default_factory=Discovery)
    load: BackendLoad | None = None  # polled load (llama.cpp / vLLM); lags our own counts
    load_at: float | None = None
    slots: SlotsInfo | None = None
    pinned: dict[int, int] = field(default_factory=dict)  # slot id -> our requests pinned there
    pinned_since: dict[int, float] = field(default_factory=dict)  # slot id -> when the latest began
    pinned_uncached: dict[int, int] = field(default_factory=dict)  # slot id -> the latest's uncached chars
    # Slot id -> other replicas' requests pinned there now (shared state): counted as busy,
    # and a poll that saw them busy is read as it is for our own.
    remote_pinned: dict[int, int] = field(default_factory=dict)
    remote_pinned_at_poll: dict[int, int] = field(default_factory=dict)
    pace: Pace = field(default_factory=Pace)  # learnt slot turnover
    # Seen on /slots: an idle slot that held a prompt was emptied (a unified KV cache,
    # llama-server's default without --parallel, saves idle slots to its host cache and
    # clears them). Pinning such a slot back skips the host cache (llama.cpp #28139), so
    # slots are not pinned there: the server restores the prompt into a slot of its choice.
    clears_idle_slots: bool = False
    # Our own share of the last poll: in flight per instance, and the slots we had pinned,
    # when its answer came. What the poll saw beyond these is other clients' work.
    inflight_at_poll: dict[str, int] = field(default_factory=dict)
    pinned_at_poll: frozenset[int] = frozenset()
    failures: int = 0  # consecutive request failures (passive health)
    suspect: bool = False  # a request failed since the last good poll
    open_until: float | None = None  # circuit open: no requests before this (monotonic)
    # Shared limits: the request-max this replica applies (its share while degraded), the
    # places other replicas hold (last known: a hint, Redis decides), and our admissions
    # waiting for Redis's answer.
    limit: int | None = None
    remote: int = 0
    admitting: int = 0
    # instances() answers for the ``served`` tuple they were computed from.
    _instances: tuple[tuple[str, ...] | None, dict[str, list[str]]] = field(
        default_factory=lambda: (None, {}), init=False, repr=False, compare=False)

    def instances(self, model: str) -> list[str]:
        """``model``'s served instances here (``instances_of``; the model as asked while
        nothing is discovered). The list is shared: callers must not change it."""
        served = self.served
        if served is None:
            return [model]
        known, memo = self._instances
        if known is not served:
            memo = {}
            self._instances = (served, memo)
        found = memo.get(model)
        if found is None:
            found = instances_of(model, served)
            if len(memo) < INSTANCES_REMEMBERED:
                memo[model] = found
        return found

    @property
    def counted(self) -> int:
        """Requests counted against ``limit``: ours in flight or being admitted, and the
        other replicas' (0 unless limits are shared)."""
        return self.total + self.remote + self.admitting

    @property
    def status(self) -> Status:
        return judge(self.samples)

    def profile(self) -> BackendProfile:
        slots = self.slots.total if self.slots else (self.load.slots_total if self.load else None)
        return BackendProfile(self.kind, self.discovery.agent_seen or self.kind == "agent", slots, self.served,
                              pinned=not self.clears_idle_slots)

    def health(self, now: float) -> str:
        """idle / busy / invalid from polls, overridden by passive health: open circuit ->
        invalid, a recent failure -> suspect."""
        if self.open_until is not None and now < self.open_until:
            return "invalid"
        status = self.status
        if status != "invalid" and self.suspect:
            return "suspect"
        return status


class InflightSlot:
    """Counts one request on server x instance while the ``async with`` body runs."""

    __slots__ = ("_state", "_instance", "_held", "_pinned", "_on_release", "_now", "_since", "_lease", "_on_pin",
                 "_uncached")

    def __init__(self, state: BackendState, instance: str, pinned: int | None = None,
                 on_release: Callable[[], None] | None = None,
                 now: Callable[[], float] | None = None, lease: Lease | None = None,
                 on_pin: Callable[[BackendState, int, bool], None] | None = None,
                 uncached_chars: int | None = None) -> None:
        self._state = state
        self._uncached = uncached_chars  # of the prompt, not cached on the pinned slot (its prefill)
        self._lease = lease
        self._on_pin = on_pin
        self._instance = instance
        self._held = False
        self._pinned = pinned
        self._on_release = on_release
        self._now = now
        self._since = 0.0

    async def __aenter__(self) -> "InflightSlot":
        state = self._state
        state.inflight[self._instance] = state.inflight.get(self._instance, 0) + 1
        state.total += 1
        if self._pinned is not None:
            state.pinned[self._pinned] = state.pinned.get(self._pinned, 0) + 1
            if self._now is not None:
                self._since = state.pinned_since[self._pinned] = self._now()
                if self._uncached is None:
                    state.pinned_uncached.pop(self._pinned, None)
                else:
                    state.pinned_uncached[self._pinned] = self._uncached
            if self._on_pin is not None:
                self._on_pin(state, self._pinned, True)
        self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Idempotent: the count goes back exactly once."""
        if not self._held:
            return
        self._held = False
        state = self._state
        left = state.inflight.get(self._instance, 1) - 1
        if left > 0:
            state.inflight[self._instance] = left
        else:
            state.inflight.pop(self._instance, None)
        state.total -= 1
        if self._pinned is not None:
            left = state.pinned.get(self._pinned, 1) - 1
            if left > 0:
                state.pinned[self._pinned] = left
            else:
                state.pinned.pop(self._pinned, None)
                state.pinned_since.pop(self._pinned, None)
                state.pinned_uncached.pop(self._pinned, None)
            if self._now is not None:
                state.pace.observe_occupancy(self._now() - self._since, self._uncached)
            if self._on_pin is not None:
                self._on_pin(state, self._pinned, False)
        if self._lease is not None:
            self._lease.release()
        if self._on_release is not None:
            self._on_release()  # capacity freed: queued requests look again
