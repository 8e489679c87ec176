"""The dashboard's sampler: every ``balancer.dashboard_sample_s`` (2 s), on the bucket's
boundary, it writes each backend's gauges into the short-window series (``state.series``)
and turns what the Prometheus counters gained since the last tick (retries by server and
kind, failovers, streams resumed by broken server and outcome) into the errors panel's recent counts (``state.events``).

Circuit openings are seen here too: each opening sets a new ``open_until`` on the backend,
so a changed value is one opening (two openings within one tick would count once; an
opening needs ``circuit_failures`` failures in a row, and while it is open no request goes
there, so that does not happen in practice). Each one counts in
``llama_balancer_circuit_openings_total`` as well.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from prometheus_client import Counter

from ..state.events import EventCounts
from ..state.queue import WaitQueue
from ..state.registry import Registry
from ..state.series import BackendSeries, Gauges
from .observability import Metrics

log = logging.getLogger("llama_balancer.sampling")


class DashboardSampler:
    def __init__(self, registry: Registry, queue: WaitQueue, series: BackendSeries, events: EventCounts,
                 metrics: Metrics, interval_s: Callable[[], float]) -> None:
        self._registry, self._queue = registry, queue
        self._series, self._events, self._metrics = series, events, metrics
        self._interval_s = interval_s
        self._open_until: dict[str, float | None] = {}
        self._retries: dict[tuple[str, ...], float] = {}
        self._failovers: dict[tuple[str, ...], float] = {}
        self._resumes: dict[tuple[str, ...], float] = {}
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            interval = self._interval_s()
            self._series.resize(interval)
            now = time.monotonic()
            await asyncio.sleep(interval - now % interval + min(0.05, interval / 10))
            try:
                self.tick(time.monotonic())
                self._failed = False
            except Exception:  # the dashboard must never take the balancer down
                if not self._failed:
                    log.exception("dashboard sample failed")
                self._failed = True

    def tick(self, now: float) -> None:
        registry = self._registry
        waiting = self._queue.snapshot()["waiting_by_server"]
        gauges: dict[str, Gauges] = {}
        for name in registry.names():
            state = registry.state(name)
            slots, load = state.slots, state.load
            gauges[name] = Gauges(
                inflight=state.total,
                queued=waiting.get(name, 0),
                slots_busy=slots.busy if slots else None,
                slots_total=slots.total if slots else (load.slots_total if load else None),
            )
            opened = state.open_until
            if opened is not None and opened != self._open_until.get(name):
                self._events.add(now, "circuit_openings", name)
                self._metrics.circuit_openings.labels(name).inc()
            self._open_until[name] = opened
        for name in [name for name in self._open_until if name not in gauges]:
            del self._open_until[name]
        self._series.sample(now, gauges)
        self._retries = self._gained(now, "retries", self._metrics.retries, self._retries,
                                     lambda labels: f"{labels[0]}: {labels[1]}")
        self._failovers = self._gained(now, "failovers", self._metrics.failovers, self._failovers,
                                       lambda labels: f"{labels[0]} → {labels[1]}")
        self._resumes = self._gained(now, "resumes", self._metrics.resumes, self._resumes,
                                     lambda labels: f"{labels[0]}: {labels[1]}")

    def _gained(self, now: float, group: str, counter: Counter, before: dict[tuple[str, ...], float],
                kind_of: Callable[[tuple[str, ...]], str]) -> dict[tuple[str, ...], float]:
        """What ``counter`` gained per label set since ``before``, into the errors panel."""
        totals = self._metrics.totals(counter)
        for labels, value in totals.items():
            gained = int(round(value - before.get(labels, 0.0)))
            if gained > 0:
                self._events.add(now, group, kind_of(labels), gained)
        return totals
