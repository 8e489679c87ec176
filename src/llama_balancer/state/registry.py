"""Backends as the balancer sees them: health windows, discovered models, in-flight counts.

In-flight counts change only through ``async with registry.slot(server, instance)``, so every
exit path (error, cancellation, client gone, backend reset) gives the count back. Where
replicas share limits (io/shared_state.py), the slot also holds the request's lease.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.config import Config, ServerConfig
from ..core.health import HealthSample, Status, judge
from ..core.models import instances_of
from ..core.profile import BackendProfile
from ..core.replicas import replica_limit
from ..core.routing import ServerView
from ..core.signals import BackendLoad, SlotsInfo, emptied_idle_slot
from ..core.usage import Usage
from .clock import Clock, iso_utc
from .leases import Admission, Lease
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


class Registry:
    """Per-server state for the current config; survives reloads for servers kept by name."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self._clock = clock
        self._states: dict[str, BackendState] = {}
        self.on_release: Callable[[], None] | None = None
        # Shared limits (io/shared_state.py): who grants leases, and the live replicas whose
        # share applies while Redis is unreachable (None: shared, or no sharing at all).
        self.admission: Admission | None = None
        self._degraded_live: int | None = None
        # A request failed on a server (suspect, maybe circuit opened): shared with replicas.
        self.on_health: Callable[[BackendState], None] | None = None
        self.on_pin: Callable[[BackendState, int, bool], None] | None = None  # a slot pinned / let go
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        window = config.balancer.health_window
        states: dict[str, BackendState] = {}
        for name, server in config.servers.items():
            state = self._states.get(name)
            if state is None:
                states[name] = BackendState(name, server, deque(maxlen=window), kind=server.kind)
                continue
            # Same object, so slots held by requests in flight still count down on it.
            # Only a new address voids what was learnt; a request-max change keeps it.
            if state.server.health_base != server.health_base:
                state.samples.clear()
                state.last = None
                state.discovery = Discovery()
            if state.server.model_base != server.model_base or state.server.kind != server.kind:
                state.served, state.served_at = None, None
                state.load, state.load_at, state.slots = None, None, None
                state.pace = Pace()
                state.clears_idle_slots = False
                state.kind = server.kind
                state.discovery = Discovery()
            state.server = server
            if state.samples.maxlen != window:
                state.samples = deque(state.samples, maxlen=window)
            states[name] = state
        for state in states.values():
            state.limit = replica_limit(state.server.request_max, self._degraded_live)
        self._states = states

    def set_degraded(self, live: int | None) -> None:
        """Shared limits lost (``live``: the replicas last known) or back (None): each
        server's limit becomes the share of it, or the whole limit over every replica."""
        self._degraded_live = live
        for state in self._states.values():
            state.limit = replica_limit(state.server.request_max, live)
            if live is not None:
                state.remote = 0  # while degraded only our own requests count

    async def admit(self, name: str) -> Lease | None:
        """A lease on ``name`` under the shared limit, None when it is full. Without shared
        limits, or for a server without request-max, every request is admitted (no lease)."""
        state = self._states[name]
        if self.admission is None or state.server.request_max is None:
            return NO_LEASE
        return await self.admission.admit(state)

    def merge_pin(self, name: str, slot: int, change: int) -> None:
        """Another replica pinned a request to ``slot`` (+1) or let it go (-1)."""
        state = self._states.get(name)
        if state is None:
            return
        left = state.remote_pinned.get(slot, 0) + change
        if left > 0:
            state.remote_pinned[slot] = left
        else:
            state.remote_pinned.pop(slot, None)

    def merge_health(self, name: str, suspect: bool, open_until: float | None) -> None:
        """Another replica saw requests fail there: suspect too, and its circuit's end."""
        state = self._states.get(name)
        if state is None:
            return
        if suspect:
            state.suspect = True
        if open_until is not None and (state.open_until is None or open_until > state.open_until):
            state.open_until = open_until

    def names(self) -> list[str]:
        return list(self._states)

    def state(self, name: str) -> BackendState:
        return self._states[name]

    def find(self, name: str) -> BackendState | None:
        """The state, or None when a reload removed the server (a poll may outlive it)."""
        return self._states.get(name)

    def slot(self, name: str, instance: str, pinned: int | None = None, lease: Lease | None = None,
             uncached_chars: int | None = None) -> InflightSlot:
        """``uncached_chars``: of a pinned request's prompt, what its slot does not hold (its
        prefill there), so the slot's expected turnover counts it (``Pace.expected_s``)."""
        return InflightSlot(self._states[name], instance, pinned, self.on_release, self._clock.monotonic,
                            lease if lease is not NO_LEASE else None, self.on_pin, uncached_chars)

    def poll_mark(self, name: str) -> PollMark:
        """Our own share of a server's work as a poll is sent (see ``record_signals``)."""
        state = self._states[name]
        return PollMark(dict(state.inflight), frozenset(state.pinned).union(state.remote_pinned),
                        dict(state.remote_pinned))

    def record_signals(self, name: str, load: BackendLoad | None, slots: SlotsInfo | None, kind: str,
                       mark: PollMark | None = None) -> None:
        """A poll's answer. Our share of it is what we had in flight when it was sent *or*
        when it came back: a request of ours that ended in between may still show busy in
        the answer (the server wrote it first), and must not read as another client's."""
        state = self._states.get(name)
        if state is not None:
            if slots is not None and not state.clears_idle_slots:
                state.clears_idle_slots = emptied_idle_slot(state.slots, slots)
            state.load, state.slots, state.kind = load, slots, kind
            state.load_at = self._clock.monotonic()
            inflight, pinned = dict(state.inflight), frozenset(state.pinned).union(state.remote_pinned)
            if mark is not None:
                for instance, count in mark.inflight.items():
                    inflight[instance] = max(inflight.get(instance, 0), count)
                pinned |= mark.pinned
            remote = dict(state.remote_pinned)
            if mark is not None:
                for slot, count in mark.remote.items():
                    remote[slot] = max(remote.get(slot, 0), count)
            state.inflight_at_poll, state.pinned_at_poll = inflight, pinned
            state.remote_pinned_at_poll = remote

    def record_failure(self, name: str, circuit_failures: int, circuit_open_s: float) -> None:
        """A request failed before its first byte: suspect now, circuit open after a run of them."""
        state = self._states.get(name)
        if state is None:
            return
        state.suspect = True
        state.failures += 1
        if state.failures >= circuit_failures:
            state.open_until = self._clock.monotonic() + circuit_open_s
            state.failures = 0
        if self.on_health is not None:
            self.on_health(state)

    def record_success(self, name: str) -> None:
        state = self._states.get(name)
        if state is not None:
            state.failures = 0

    def record_prefill(self, name: str, usage: Usage, prompt_chars: int) -> None:
        """An answer's prefill timings (llama-server's), for the server's prefill pace; an
        answer without them (another kind of backend) teaches nothing."""
        state = self._states.get(name)
        if state is not None and usage.prefill_tokens and usage.prefill_ms and usage.prompt_tokens:
            state.pace.observe_prefill(prompt_chars, usage.prompt_tokens, usage.prefill_tokens, usage.prefill_ms)

    def record_health(self, name: str, sample: HealthSample, url: str) -> None:
        state = self._states.get(name)
        if state is None:  # removed by a reload while the poll was running
            return
        state.samples.append(sample)
        if sample.status != "invalid":
            state.suspect = False  # a good poll clears passive suspicion
        state.last = {
            "status": sample.status,
            "gpu_util_max5s": sample.gpu_util,
            "updated_at": iso_utc(self._clock.wall()),
            "url": url,
        }
        if sample.detail:
            state.last["detail"] = sample.detail

    def record_models(self, name: str, model_ids: list[str]) -> None:
        state = self._states.get(name)
        if state is not None:
            state.served = tuple(model_ids)
            state.served_at = self._clock.monotonic()

    def view(self, name: str) -> ServerView:
        """The classic policy's view; passive health (suspect, open circuit) reads as invalid."""
        state = self._states[name]
        health = state.health(self._clock.monotonic())
        return ServerView(
            name=name,
            status="invalid" if health == "suspect" else health,  # type: ignore[arg-type]
            total_inflight=state.counted,
            request_max=state.limit,
            served=state.served,
            inflight=state.inflight,
        )

    def total_inflight(self) -> int:
        return sum(state.total for state in self._states.values())

    def snapshot(self) -> list[dict[str, Any]]:
        """The ``backends`` part of /llmhealth-snapshot: a list in config order, as the old
        tool wrote it (its keys, plus ``name`` and a few more)."""
        now = self._clock.monotonic()
        return [
            {
                "name": name,
                "base": state.server.model_base,
                "status": state.status,
                "last": state.last,
                "total_inflight": state.total,
                "model_inflight": dict(state.inflight),
                "request_max": state.server.request_max,
                "models": list(state.served) if state.served is not None else None,
                **self._extras(state, now),
            }
            for name, state in self._states.items()
        ]

    @staticmethod
    def _extras(state: BackendState, now: float) -> dict[str, Any]:
        """Our additions to a backend's snapshot entry: kind, passive health, polled load, and
        how long our pinned requests keep a slot (what the cache-aware hold expects)."""
        load = state.load
        return {
            "kind": state.kind,
            "configured_kind": state.server.kind,
            "agent": state.discovery.agent_seen or state.kind == "agent",
            "health": state.health(now),
            "suspect": state.suspect,
            "circuit_open": state.open_until is not None and now < state.open_until,
            "slots_total": state.slots.total if state.slots else (load.slots_total if load else None),
            "slots_busy": state.slots.busy if state.slots else None,
            "polled_running": load.running if load else None,
            "polled_waiting": load.waiting if load else None,
            "kv_usage": load.kv_usage if load else None,
            "slot_occupancy_s": None if state.pace.occupancy_s is None else round(state.pace.occupancy_s, 3),
            # Of it, what is not prefill (generation, fixed costs): a slot's expected turnover
            # is this plus its request's uncached prompt at the prefill pace.
            "slot_rest_s": None if state.pace.rest_s is None else round(state.pace.rest_s, 3),
            # The prefill pace the hold weighs waits against: ms per 1,000 uncached prompt chars.
            "prefill_ms_per_kchar": None if state.pace.prefill_s_per_char is None
            else round(state.pace.prefill_s_per_char * 1e6, 2),
            "slots_pinned": state.slots is not None and not state.clears_idle_slots,
            # Shared limits: the limit this replica applies now, and other replicas' places.
            "request_max_effective": state.limit,
            "remote_inflight": state.remote,
        }


NO_LEASE = Lease("", "", None)  # admitted without a shared limit: nothing to give back
