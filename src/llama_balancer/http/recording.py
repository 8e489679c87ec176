"""Begin and finish an Exchange: the one place metrics, access log, stats and the
dashboard's series and error counts are fed."""
from __future__ import annotations

import time
from asyncio import CancelledError

from aiohttp import web

from ..core.errors import BalancerError, QueueTimeout, UpstreamError
from ..core.identity import client_ip
from ..core.usage import usage_from_tail
from ..state.exchange import Exchange
from .context import REQUEST_ID, AppContext


def begin_exchange(ctx: AppContext, request_id: str, path: str, endpoint_label: str, forwarded_for: str | None,
                   peer: str | None) -> Exchange:
    ip = client_ip(forwarded_for, peer, ctx.trusted)
    return Exchange(request_id=request_id, endpoint=path, endpoint_label=endpoint_label,
                    started=time.monotonic(), ip=ip, identity=ip)


def begin_exchange_for(ctx: AppContext, request: web.Request, endpoint_label: str) -> Exchange:
    """An exchange for a request that aiohttp parsed."""
    return begin_exchange(ctx, request[REQUEST_ID], request.path, endpoint_label,
                          request.headers.get("X-Forwarded-For"), request.remote)


def finish_exchange(ctx: AppContext, ex: Exchange, error: BaseException | None) -> None:
    """Called exactly once per exchange, however it ended."""
    ex.ended = time.monotonic()
    if error is not None:
        ex.outcome = _outcome_of(error)
        if ex.status is None:
            ex.status = getattr(error, "status", None)
    if ex.tail:
        ex.usage = usage_from_tail(b"".join(ex.tail))
        ex.tail.clear()
    ctx.metrics.observe(ex)
    ctx.access_log.write(ex, ctx.clock.wall())
    if ex.outcome != "completed" or (ex.status is not None and ex.status >= 400):
        _count_error(ctx, ex, error)
    usage = ex.usage
    ttft_s = ex.ttft_s if ex.streamed else None  # a plain answer's first byte is its whole body
    if ex.server is not None:
        ctx.series.observe(ex.server, ex.ended, ex.first_byte, ttft_s,
                           usage.completion_tokens if usage else None, _generating_from(ex))
    if ex.model is not None and ex.server is not None:
        ctx.stats.record(
            ex.ip, ex.model, ex.user, ex.server, ex.instance or "", ex.reason or "",
            status=ex.status, ttft_s=ttft_s, duration_s=ex.duration_s,
            completion_tokens=usage.completion_tokens if usage else None,
            queue_wait_s=ex.queue_wait_s, request_id=ex.request_id, generation_s=_generation_s(ex),
            prompt_tokens=usage.prompt_tokens if usage else None,
            cached_tokens=usage.cached_tokens if usage else None,
        )


def note_refusal(ctx: AppContext, error: BalancerError) -> None:
    """A request refused before it became an exchange (no key, a malformed request line or
    head, a deadline missed): the errors panel counts it by code like any other error."""
    ctx.events.add(time.monotonic(), f"{error.status // 100}xx", error.code)


def _count_error(ctx: AppContext, ex: Exchange, error: BaseException | None) -> None:
    """The errors panel's counts: a 4xx/5xx by kind (ours by error code, ``upstream_<how>``
    when no backend answered, ``backend_<status>`` for a backend's own error answer), and
    the outcomes that are not a status (client gone, answer broken off)."""
    now = ex.ended if ex.ended is not None else time.monotonic()
    status = ex.status
    if status is not None and status >= 400:
        if isinstance(error, UpstreamError):
            kind = "upstream_" + error.kind
        elif isinstance(error, BalancerError):
            kind = error.code
        else:
            kind = f"backend_{status}"
        ctx.events.add(now, f"{status // 100}xx", kind)
        if isinstance(error, QueueTimeout):
            ctx.events.add(now, "queue_timeouts", ex.model or "(none)")
            ctx.metrics.queue_timeouts.inc()
    elif ex.outcome == "error":
        ctx.events.add(now, "5xx", "internal_error")
    if ex.outcome == "client_closed":
        ctx.events.add(now, "outcomes", "client_closed")
    elif ex.outcome == "upstream_error" and status is not None and status < 400:
        ctx.events.add(now, "outcomes", "broken_answer")


def _generating_from(ex: Exchange) -> float | None:
    """When the backend began generating: llama-server's predicted_ms before the end when
    reported, else the first byte of a stream, else when the request was sent."""
    if ex.ended is None:
        return None
    if ex.usage is not None and ex.usage.generation_ms:
        return max(ex.started, ex.ended - ex.usage.generation_ms / 1000)
    if ex.streamed and ex.first_byte is not None:
        return ex.first_byte
    return ex.started + ex.queue_wait_s


def _generation_s(ex: Exchange) -> float | None:
    """llama-server's own predicted_ms when reported; else first to last byte of a stream
    (a non-streamed answer arrives at once, so that span says nothing)."""
    if ex.usage is not None and ex.usage.generation_ms:
        return ex.usage.generation_ms / 1000
    if ex.duration_s is None or ex.ttft_s is None:
        return None
    span = ex.duration_s - ex.ttft_s
    return span if span > 0.01 else None


def _outcome_of(error: BaseException) -> str:
    if isinstance(error, (CancelledError, ConnectionError)):
        return "client_closed"
    if isinstance(error, UpstreamError):
        return "upstream_error"
    if isinstance(error, BalancerError):
        return "rejected"
    return "error"
