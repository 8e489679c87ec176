"""The shared-state gauges on /metrics, read from ``SharedState`` at scrape time."""
from __future__ import annotations

from typing import Any, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .shared_state import SharedState


class SharedCollector(Collector):
    """Registered on the app's metrics when replicas share state."""

    def __init__(self, shared: SharedState) -> None:
        self._shared = shared

    def collect(self) -> Iterable[Any]:
        return shared_gauges(self._shared)


def shared_gauges(shared: SharedState) -> Iterable[Any]:
    link = shared.link
    yield GaugeMetricFamily("llama_balancer_shared_state_degraded",
                            "1 while Redis is unreachable or slow and each replica admits its share alone.",
                            value=1.0 if link.mode == "degraded" else 0.0)
    yield GaugeMetricFamily("llama_balancer_shared_state_live_replicas",
                            "Replicas alive in Redis, as last known.", value=link.live)
    yield GaugeMetricFamily("llama_balancer_shared_state_leases_held", "Places this replica's requests hold.",
                            value=shared.book.total())
    yield GaugeMetricFamily("llama_balancer_shared_state_leases_spare",
                            "Places this replica holds in reserve, for requests to take without a round trip.",
                            value=shared.book.spares())
    admissions = CounterMetricFamily("llama_balancer_shared_admissions", "Admissions by outcome "
                                     "(granted/refused by Redis, reserved: from the reserve, local while "
                                     "degraded, errors).",
                                     labels=["outcome"])
    for outcome, count in shared.counts.items():
        admissions.add_metric([outcome], count)
    yield admissions
    yield CounterMetricFamily("llama_balancer_shared_state_transitions",
                              "Changes between shared and degraded mode.", value=link.transitions)
