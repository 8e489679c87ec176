"""Backends as the balancer sees them: health windows, discovered models, in-flight counts.

In-flight counts change only through ``async with registry.slot(server, instance)``, so every
exit path (error, cancellation, client gone, backend reset) gives the count back.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..core.config import Config, ServerConfig
from ..core.health import HealthSample, Status, judge
from ..core.routing import ServerView
from .clock import Clock, iso_utc


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

    @property
    def status(self) -> Status:
        return judge(self.samples)


class InflightSlot:
    """Counts one request on server x instance while the ``async with`` body runs."""

    __slots__ = ("_state", "_instance", "_held")

    def __init__(self, state: BackendState, instance: str) -> None:
        self._state = state
        self._instance = instance
        self._held = False

    async def __aenter__(self) -> "InflightSlot":
        state = self._state
        state.inflight[self._instance] = state.inflight.get(self._instance, 0) + 1
        state.total += 1
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


class Registry:
    """Per-server state for the current config; survives reloads for servers kept by name."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self._clock = clock
        self._states: dict[str, BackendState] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        window = config.balancer.health_window
        states: dict[str, BackendState] = {}
        for name, server in config.servers.items():
            state = self._states.get(name)
            if state is None:
                states[name] = BackendState(name, server, deque(maxlen=window))
                continue
            # Same object, so slots held by requests in flight still count down on it.
            # Only a new address voids what was learnt; a request-max change keeps it.
            if state.server.health_base != server.health_base:
                state.samples.clear()
                state.last = None
            if state.server.model_base != server.model_base:
                state.served, state.served_at = None, None
            state.server = server
            if state.samples.maxlen != window:
                state.samples = deque(state.samples, maxlen=window)
            states[name] = state
        self._states = states

    def names(self) -> list[str]:
        return list(self._states)

    def state(self, name: str) -> BackendState:
        return self._states[name]

    def slot(self, name: str, instance: str) -> InflightSlot:
        return InflightSlot(self._states[name], instance)

    def record_health(self, name: str, sample: HealthSample, url: str) -> None:
        state = self._states.get(name)
        if state is None:  # removed by a reload while the poll was running
            return
        state.samples.append(sample)
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
        state = self._states[name]
        return ServerView(
            name=name,
            status=state.status,
            total_inflight=state.total,
            request_max=state.server.request_max,
            served=state.served,
            inflight=state.inflight,
        )

    def total_inflight(self) -> int:
        return sum(state.total for state in self._states.values())

    def snapshot(self) -> dict[str, Any]:
        """The ``backends`` part of /llmhealth-snapshot (the old tool's keys, plus a few)."""
        return {
            name: {
                "base": state.server.model_base,
                "status": state.status,
                "last": state.last,
                "total_inflight": state.total,
                "model_inflight": dict(state.inflight),
                "request_max": state.server.request_max,
                "models": list(state.served) if state.served is not None else None,
            }
            for name, state in self._states.items()
        }
