"""Begin and finish an Exchange: the one place metrics, access log and stats are fed."""
from __future__ import annotations

import time

from aiohttp import web

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
    if ex.model is not None and ex.server is not None:
        ctx.stats.record(
            ex.ip, ex.model, ex.user, ex.server, ex.instance or "", ex.reason or "",
            status=ex.status, ttft_s=ex.ttft_s, duration_s=ex.duration_s,
            completion_tokens=ex.usage.completion_tokens if ex.usage else None,
            queue_wait_s=ex.queue_wait_s, request_id=ex.request_id, generation_s=_generation_s(ex),
        )


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
    from asyncio import CancelledError

    from ..core.errors import BalancerError, UpstreamError

    if isinstance(error, (CancelledError, ConnectionError)):
        return "client_closed"
    if isinstance(error, UpstreamError):
        return "upstream_error"
    if isinstance(error, BalancerError):
        return "rejected"
    return "error"
