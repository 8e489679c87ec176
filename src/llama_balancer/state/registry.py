"""Backends as the balancer sees them: one ``BackendState`` per configured server (``backend``),
kept across reloads for servers kept by name, and what polls and requests teach about each.

In-flight counts change only through ``async with registry.slot(server, instance)``
(``backend.InflightSlot``), so every exit path gives the count back.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

from ..core.config import Config
from ..core.health import HealthSample
from ..core.replicas import replica_limit
from ..core.routing import ServerView
from ..core.signals import BackendLoad, SlotsInfo, emptied_idle_slot
from ..core.usage import Usage
from .backend import BackendState, Discovery, InflightSlot, PollMark
from .clock import Clock, iso_utc
from .leases import Admission, Lease
from .pace import Pace


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
