"""Prometheus metrics and the structured access log; both fed once per finished exchange.

The metrics live in a registry the app owns (not prometheus-client's global one), so several
balancers in one process (tests) never share counters.
"""
from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from bisect import bisect_left
from typing import Any, Callable, Iterable

import aiohttp.http_exceptions
import orjson
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from ..state.clock import iso_utc
from ..state.exchange import Exchange
from ..state.queue import WaitQueue
from ..state.registry import Registry

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: Registry, extra_gauges: Callable[[], Iterable[GaugeMetricFamily]] | None = None) -> None:
        self.prom = CollectorRegistry(auto_describe=True)
        self._exchanges = _ExchangeMetrics()
        self.prom.register(self._exchanges)
        self.retries = Counter("llama_balancer_retries", "Requests sent again to another backend before the first byte.",
                               ["server", "kind"], registry=self.prom)
        self.resumes = Counter("llama_balancer_resumes", "Streams broken after their first byte, by what came of "
                               "them: resumed (another backend continued it), failed (none could), "
                               "not_resumable (tools, grammar, ...: ended with an error event).",
                               ["server", "outcome"], registry=self.prom)
        self.failovers = Counter("llama_balancer_failovers", "Requests that succeeded elsewhere after a failure.",
                                 ["from_server", "to_server"], registry=self.prom)
        self.circuit_openings = Counter("llama_balancer_circuit_openings", "Circuits opened after failures in a row.",
                                        ["server"], registry=self.prom)
        self.queue_timeouts = Counter("llama_balancer_queue_timeouts", "Requests answered 503 after waiting in the queue.",
                                      registry=self.prom)
        self.prom.register(_StateCollector(registry, extra_gauges))

    def observe(self, ex: Exchange) -> None:
        server = ex.server or "(none)"
        # The status the client was sent (none: it got no answer head); how the exchange
        # ended (completed, client_closed, upstream_error, rejected, error) is the outcome.
        status = "none" if ex.status is None else str(ex.status)
        instance = ex.instance or "" if ex.model_label != "(other)" else "(other)"
        bundle = self._exchanges.bundle(ex.model_label, server, instance, ex.endpoint_label, status, ex.outcome)
        bundle.requests.value += 1
        if ex.ended is not None:  # ex.duration_s
            bundle.duration.observe(ex.ended - ex.started)
        if ex.first_byte is not None and ex.streamed:  # ex.ttft_s; a plain answer's first byte says nothing
            bundle.ttft.observe(ex.first_byte - ex.started)
        usage = ex.usage
        if usage is not None:
            if usage.prompt_tokens:
                bundle.prompt.add(usage.prompt_tokens)
                if usage.cached_tokens is not None:  # created at 0 too: a cold cache reads 0 %, not "no data"
                    bundle.cached.add(usage.cached_tokens)
            if usage.completion_tokens:
                bundle.completion.add(usage.completion_tokens)

    def totals(self, counter: Counter) -> dict[tuple[str, ...], float]:
        """A counter's current value per label set (for the dashboard's recent counts)."""
        out: dict[tuple[str, ...], float] = {}
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[tuple(sample.labels.values())] = sample.value
        return out

    def exposition(self) -> bytes:
        return generate_latest(self.prom)


class _Count:
    """One label set's counter: its value and when it was created (its ``_created`` sample)."""

    __slots__ = ("value", "created", "_family", "_labels")

    def __init__(self, family: dict[tuple[str, ...], "_Count"] | None, labels: tuple[str, ...]) -> None:
        self.value = 0.0
        self.created = time.time()
        self._family = family  # None: listed from the start (the requests counter)
        self._labels = labels

    def add(self, amount: float) -> None:
        if self._family is not None:
            _first_use(self)
        self.value += amount


class _Buckets:
    """One label set's histogram: observations per bucket (not cumulative), their sum."""

    __slots__ = ("counts", "total", "created", "_family", "_labels")

    def __init__(self, family: dict[tuple[str, ...], "_Buckets"], labels: tuple[str, ...]) -> None:
        self.counts = [0] * len(_BOUNDS)
        self.total = 0.0
        self.created = 0.0
        self._family: dict[tuple[str, ...], _Buckets] | None = family
        self._labels = labels

    def observe(self, amount: float) -> None:
        if self._family is not None:
            _first_use(self)
        self.total += amount
        at = bisect_left(_BOUNDS, amount)  # the first bucket whose bound is >= amount
        if at < len(_BOUNDS):
            self.counts[at] += 1


def _first_use(item: "_Count | _Buckets") -> None:
    """Listed in the exposition from its first use on (as a prometheus-client child is), and
    created then."""
    family = item._family
    assert family is not None
    item.created = time.time()
    family[item._labels] = item  # type: ignore[assignment]
    item._family = None


class _Bundle:
    """What one exchange's labels touch: its requests counter and the label sets of the
    histograms and token counters it shares with others (model x server x endpoint, model x
    server), looked up once per label combination."""

    __slots__ = ("requests", "duration", "ttft", "prompt", "cached", "completion")

    def __init__(self, requests: _Count, duration: _Buckets, ttft: _Buckets, prompt: _Count, cached: _Count,
                 completion: _Count) -> None:
        self.requests, self.duration, self.ttft = requests, duration, ttft
        self.prompt, self.cached, self.completion = prompt, cached, completion


_BOUNDS = (*LATENCY_BUCKETS, float("inf"))
_REQUEST_LABELS = ("model", "server", "instance", "endpoint", "status", "outcome")
_TIMED_LABELS = ("model", "server", "endpoint")
_TOKEN_LABELS = ("model", "server")
_COUNTERS = (
    ("llama_balancer_prompt_tokens", "Prompt tokens reported by backends, cached ones included."),
    ("llama_balancer_prompt_cached_tokens", "Of the prompt tokens, those the backend served from its prompt cache "
                                            "(counted where it reports them)."),
    ("llama_balancer_completion_tokens", "Completion tokens reported by backends."),
)


class _ExchangeMetrics(Collector):
    """The counters and histograms every finished exchange feeds, kept as plain numbers and
    turned into Prometheus families at scrape time, with the names, labels and samples
    prometheus-client's ``Counter`` and ``Histogram`` give them (a test compares the two).

    A prometheus-client child takes a lock and a few calls per update, and its histogram a
    Python loop over the buckets: six of those per request were about 4 % of its CPU
    (bench/path.py). The balancer updates them from the event loop's thread only."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, ...], _Count] = {}
        self._duration: dict[tuple[str, ...], _Buckets] = {}
        self._ttft: dict[tuple[str, ...], _Buckets] = {}
        self._tokens: tuple[dict[tuple[str, ...], _Count], ...] = ({}, {}, {})
        self._bundles: dict[tuple[str, ...], _Bundle] = {}
        self._shared: dict[tuple[str, ...], object] = {}  # the label sets bundles share, by kind and labels

    def bundle(self, model: str, server: str, instance: str, endpoint: str, status: str, outcome: str) -> _Bundle:
        key = (model, server, instance, endpoint, status, outcome)
        bundle = self._bundles.get(key)
        if bundle is None:
            requests = self._requests[key] = _Count(None, key)  # created at once, as labels() would
            timed, tokens = (model, server, endpoint), (model, server)
            bundle = self._bundles[key] = _Bundle(
                requests, self._shared_one("duration", timed, lambda: _Buckets(self._duration, timed)),
                self._shared_one("ttft", timed, lambda: _Buckets(self._ttft, timed)),
                *(self._shared_one(str(i), tokens, lambda i=i: _Count(self._tokens[i], tokens)) for i in range(3)))
        return bundle

    def _shared_one(self, kind: str, labels: tuple[str, ...], make: Callable[[], Any]) -> Any:
        key = (kind, *labels)
        found = self._shared.get(key)
        if found is None:
            found = self._shared[key] = make()
        return found

    def describe(self) -> Iterable[Any]:
        return [CounterMetricFamily("llama_balancer_requests", ""),
                HistogramMetricFamily("llama_balancer_request_duration_seconds", ""),
                HistogramMetricFamily("llama_balancer_time_to_first_token_seconds", ""),
                *(CounterMetricFamily(name, "") for name, _ in _COUNTERS)]

    def collect(self) -> Iterable[Any]:
        requests = CounterMetricFamily("llama_balancer_requests", "Requests by status sent and outcome.",
                                       labels=_REQUEST_LABELS)
        for labels, count in list(self._requests.items()):
            requests.add_metric(labels, count.value, created=count.created)
        yield requests
        yield _histogram("llama_balancer_request_duration_seconds", "Request time, first byte in to last byte out.",
                         self._duration)
        yield _histogram("llama_balancer_time_to_first_token_seconds",
                         "Time to the first body byte relayed, streamed answers (text/event-stream) only.", self._ttft)
        for (name, documentation), family in zip(_COUNTERS, self._tokens):
            counter = CounterMetricFamily(name, documentation, labels=_TOKEN_LABELS)
            for labels, count in list(family.items()):
                counter.add_metric(labels, count.value, created=count.created)
            yield counter


def _histogram(name: str, documentation: str, family: dict[tuple[str, ...], _Buckets]) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(name, documentation, labels=_TIMED_LABELS)
    for labels, buckets in list(family.items()):
        cumulative, running = [], 0
        for bound, count in zip(_BOUNDS, buckets.counts):
            running += count
            cumulative.append((floatToGoString(bound), running))
        histogram.add_metric(labels, cumulative, buckets.total)
        histogram.samples.append(Sample(name + "_created", dict(zip(_TIMED_LABELS, labels)), buckets.created))
    return histogram


class _StateCollector(Collector):
    """Gauges read from live state at scrape time, so nothing is updated on the hot path."""

    def __init__(self, registry: Registry, extra: Callable[[], Iterable[GaugeMetricFamily]] | None) -> None:
        self._registry = registry
        self._extra = extra

    def collect(self) -> Iterable[GaugeMetricFamily]:
        inflight = GaugeMetricFamily("llama_balancer_inflight_requests", "Requests in flight per server.", labels=["server"])
        health = GaugeMetricFamily("llama_balancer_backend_health", "1 for the backend's current health state.",
                                   labels=["server", "state"])
        for name in self._registry.names():
            state = self._registry.state(name)
            inflight.add_metric([name], state.total)
            for status in ("idle", "busy", "invalid"):
                health.add_metric([name, status], 1.0 if state.status == status else 0.0)
        yield inflight
        yield health
        if self._extra is not None:
            yield from self._extra()


def queue_gauges(queue: WaitQueue) -> Iterable[GaugeMetricFamily]:
    """Requests waiting for a free backend, per model and per server they wait for (one
    request may wait for several servers), and the longest wait so far."""
    state = queue.snapshot()
    waiting = GaugeMetricFamily("llama_balancer_queued_requests", "Requests waiting in the queue.", labels=["model"])
    for model, count in state["waiting_by_model"].items():
        waiting.add_metric([model], count)
    yield waiting
    per_server = GaugeMetricFamily("llama_balancer_queued_requests_by_server",
                                   "Queued requests that may go to this server.", labels=["server"])
    for server, count in state["waiting_by_server"].items():
        per_server.add_metric([server], count)
    yield per_server
    yield GaugeMetricFamily("llama_balancer_queue_oldest_wait_seconds", "Longest current wait.",
                            value=state["oldest_wait_s"])


class AccessLog:
    """One JSON line per request, to stdout or a rotating file, written off the event loop."""

    def __init__(self, target: str, max_bytes: int, backups: int) -> None:
        self.enabled = target != "off"
        self._listener: logging.handlers.QueueListener | None = None
        self._logger = logging.Logger("llama_balancer.access")  # standalone, not in the global tree
        if not self.enabled:
            return
        if target == "stdout":
            handler: logging.Handler = logging.StreamHandler(sys.stdout)
        else:
            handler = logging.handlers.RotatingFileHandler(target, maxBytes=max_bytes, backupCount=backups)
        handler.setFormatter(logging.Formatter("%(message)s"))
        lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._logger.addHandler(logging.handlers.QueueHandler(lines))
        self._listener = logging.handlers.QueueListener(lines, handler)
        self._listener.start()

    def write(self, ex: Exchange, wall: float) -> None:
        if self.enabled:
            self._logger.info(orjson.dumps(access_entry(ex, wall)).decode())

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


def access_entry(ex: Exchange, wall: float) -> dict:
    usage = ex.usage
    return {
        "ts": iso_utc(wall),
        "request_id": ex.request_id,
        "client": ex.identity or ex.ip,
        "ip": ex.ip,
        "user": ex.user,
        "endpoint": ex.endpoint,
        "model": ex.model,
        "server": ex.server,
        "instance": ex.instance,
        "reason": ex.reason,
        "status": ex.status,
        "outcome": ex.outcome,
        "retries": ex.retries,
        **({"resumed": len(ex.resumed_from), "resumed_from": ex.resumed_from} if ex.resumed_from else {}),
        "queue_wait_ms": round(ex.queue_wait_s * 1000, 1),
        "stream": ex.streamed,
        "ttft_ms": None if ex.ttft_s is None else round(ex.ttft_s * 1000, 1),
        "duration_ms": None if ex.duration_s is None else round(ex.duration_s * 1000, 1),
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "cached_tokens": usage.cached_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
    }


class QuietProtocolErrors(logging.LoggerAdapter):
    """aiohttp's server log, minus tracebacks for what clients do wrong.

    aiohttp logs a malformed request (a header over ``max_header_bytes``, a broken request
    line) or a client resetting its connection mid-request with a full traceback at ERROR,
    although the client got its 400 or is gone, and nothing in the balancer failed. Those
    become one WARNING line naming the error; anything else passes through unchanged.
    """

    QUIET = (aiohttp.http_exceptions.HttpProcessingError, ConnectionError)

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, self.QUIET) and level >= logging.ERROR:
            kwargs["exc_info"] = None
            level = logging.WARNING
            msg = f"{msg}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        super().log(level, msg, *args, **kwargs)
