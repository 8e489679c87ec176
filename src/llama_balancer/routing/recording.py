"""Begin and finish an Exchange: the one place metrics, access log, stats and the
dashboard's series and error counts are fed, whichever data path served the request.

Its times are the injected clock's monotonic ones (``SystemClock`` reads ``time.monotonic``,
as the data paths do when they stamp an answer's first byte), so the routing layer's
deadlines and the record's durations are measured on the same clock."""
from __future__ import annotations

from asyncio import CancelledError
from typing import Callable

from ..core.errors import BalancerError, QueueTimeout, UpstreamError
from ..core.identity import TrustedProxies, client_ip
from ..core.usage import Usage, usage_from_tail
from ..io.observability import AccessLog, Metrics
from ..state.access_stats import AccessRecord, AccessStats
from ..state.clock import Clock
from ..state.events import EventCounts
from ..state.exchange import Exchange
from ..state.series import BackendSeries


class Recorder:
    """Opens each exchange's record and, exactly once, hands the finished one to every sink."""

    def __init__(self, clock: Clock, metrics: Metrics, access_log: AccessLog, series: BackendSeries,
                 stats: AccessStats, events: EventCounts, trusted: Callable[[], TrustedProxies],
                 prefill: Callable[[str, Usage, int], None] | None = None) -> None:
        self.clock, self.metrics, self.access_log = clock, metrics, access_log
        self.series, self.stats, self.events = series, stats, events
        self._trusted = trusted  # replaced on reload, read per request
        self._prefill = prefill  # the registry's prefill pace (Registry.record_prefill)

    def begin(self, request_id: str, path: str, endpoint_label: str, forwarded_for: str | None,
              peer: str | None) -> Exchange:
        ip = client_ip(forwarded_for, peer, self._trusted())
        return Exchange(request_id=request_id, endpoint=path, endpoint_label=endpoint_label,
                        started=self.clock.monotonic(), ip=ip, identity=ip)

    def finish(self, ex: Exchange, error: BaseException | None) -> None:
        """Called exactly once per exchange, however it ended."""
        ex.ended = self.clock.monotonic()
        if error is not None:
            ex.outcome = outcome_of(error)
            if ex.status is None:
                ex.status = getattr(error, "status", None)
        if ex.tail:
            ex.usage = usage_from_tail(b"".join(ex.tail))
            ex.tail.clear()
        self.metrics.observe(ex)
        if self.access_log.enabled:
            self.access_log.write(ex, self.clock.wall())
        if ex.outcome != "completed" or (ex.status is not None and ex.status >= 400):
            self._count_error(ex, error)
        usage = ex.usage
        ttft_s = ex.ttft_s if ex.streamed else None  # a plain answer's first byte is its whole body
        if usage is not None and ex.server is not None and ex.prompt_chars and not ex.resumed_from \
                and self._prefill is not None:  # a resumed answer's timings are its last try's
            self._prefill(ex.server, usage, ex.prompt_chars)
        if ex.server is not None:
            self.series.observe(ex.server, ex.ended, ex.first_byte, ttft_s,
                                usage.completion_tokens if usage else None, generating_from(ex))
        if ex.model is not None and ex.server is not None:
            stats = self.stats
            stats.add(AccessRecord(  # the fields in AccessRecord's order
                stats.wall(), ex.ip, ex.model, ex.user, ex.server, ex.instance or "", ex.reason or "", ex.status,
                ttft_s, ex.duration_s, usage.completion_tokens if usage else None, ex.queue_wait_s, ex.request_id,
                generation_s(ex), usage.prompt_tokens if usage else None, usage.cached_tokens if usage else None))

    def refused(self, error: BalancerError) -> None:
        """A request refused before it became an exchange (no key, a malformed request line or
        head, a deadline missed): the errors panel counts it by code like any other error."""
        self.events.add(self.clock.monotonic(), f"{error.status // 100}xx", error.code)

    def _count_error(self, ex: Exchange, error: BaseException | None) -> None:
        """The errors panel's counts: a 4xx/5xx by kind (ours by error code, ``upstream_<how>``
        when no backend answered, ``backend_<status>`` for a backend's own error answer), and
        the outcomes that are not a status (client gone, answer broken off)."""
        now = ex.ended if ex.ended is not None else self.clock.monotonic()
        events, status = self.events, ex.status
        if status is not None and status >= 400:
            if isinstance(error, UpstreamError):
                kind = "upstream_" + error.kind
            elif isinstance(error, BalancerError):
                kind = error.code
            else:
                kind = f"backend_{status}"
            events.add(now, f"{status // 100}xx", kind)
            if isinstance(error, QueueTimeout):
                events.add(now, "queue_timeouts", ex.model or "(none)")
                self.metrics.queue_timeouts.inc()
        elif ex.outcome == "error":
            events.add(now, "5xx", "internal_error")
        if ex.outcome == "client_closed":
            events.add(now, "outcomes", "client_closed")
        elif ex.outcome == "upstream_error" and status is not None and status < 400:
            events.add(now, "outcomes", "broken_answer")


def generating_from(ex: Exchange) -> float | None:
    """When the backend began generating: llama-server's predicted_ms before the end when
    reported, else the first byte of a stream, else when the request was sent."""
    if ex.ended is None:
        return None
    if ex.usage is not None and ex.usage.generation_ms:
        return max(ex.started, ex.ended - ex.usage.generation_ms / 1000)
    if ex.streamed and ex.first_byte is not None:
        return ex.first_byte
    return ex.started + ex.queue_wait_s


def generation_s(ex: Exchange) -> float | None:
    """llama-server's own predicted_ms when reported; else first to last byte of a stream
    (a non-streamed answer arrives at once, so that span says nothing)."""
    if ex.usage is not None and ex.usage.generation_ms:
        return ex.usage.generation_ms / 1000
    if ex.duration_s is None or ex.ttft_s is None:
        return None
    span = ex.duration_s - ex.ttft_s
    return span if span > 0.01 else None


def outcome_of(error: BaseException) -> str:
    if isinstance(error, (CancelledError, ConnectionError)):
        return "client_closed"
    if isinstance(error, UpstreamError):
        return "upstream_error"
    if isinstance(error, BalancerError):
        return "rejected"
    return "error"
