"""The routing layer's log lines: each retry, failover and give-up (throttled), and at
debug level each routing decision with its reason. Kept apart so that routed.py reads as
the request's way, not as its commentary."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..core.errors import BalancerError
from ..io.oplog import event
from ..state.exchange import Exchange
from .context import AppContext

if TYPE_CHECKING:
    from .routed import RetryElsewhere

log = logging.getLogger("llama_balancer.routing")


def failure_reason(failure: "RetryElsewhere") -> str:
    if failure.error is not None:
        return failure.error.message
    return f"answered HTTP {failure.kind.removeprefix('http_')}"


def note_retry(ctx: AppContext, ex: Exchange, failure: "RetryElsewhere") -> None:
    """A failure before the first byte: the request goes on elsewhere; the backend's state
    change (suspect, circuit open) is the watch's line."""
    reason = failure_reason(failure)
    state = ctx.registry.find(failure.server)
    if state is not None:
        ctx.watch.observe(state, reason)
    ctx.notices.emit(log, logging.WARNING, "retry", f"retry:{failure.server}",
                     "request %s to %s failed before its answer began (%s); trying another backend",
                     ex.request_id, failure.server, reason, request_id=ex.request_id, model=ex.model,
                     server=failure.server, kind=failure.kind, attempt=ex.retries, reason=reason)


def note_failover(ctx: AppContext, ex: Exchange, first: str, to: str) -> None:
    ctx.notices.emit(log, logging.INFO, "failover", f"failover:{first}",
                     "request %s failed over from %s to %s after %d retr%s", ex.request_id, first, to,
                     ex.retries, "y" if ex.retries == 1 else "ies", request_id=ex.request_id, model=ex.model,
                     **{"from": first}, to=to, retries=ex.retries)


def note_gave_up(ctx: AppContext, ex: Exchange, server: str, reason: str) -> None:
    """The last try failed too: the client gets the error."""
    ctx.notices.emit(log, logging.WARNING, "upstream_failed", f"failed:{server}",
                     "request %s failed on %s after %d retr%s: %s", ex.request_id, server, ex.retries,
                     "y" if ex.retries == 1 else "ies", reason, request_id=ex.request_id, model=ex.model,
                     server=server, retries=ex.retries, reason=reason)


def note_refused(ctx: AppContext, ex: Exchange, exc: BalancerError) -> None:
    """A request answered 429 (queue full), 503 after its queue wait, or 503 with no backend."""
    name = {"queue_full": "queue_full", "queue_timeout": "queue_timeout"}.get(exc.code, "no_backend")
    waited = round(ex.queue_wait_s, 3) if ex.queue_wait_s else None
    ctx.notices.emit(log, logging.WARNING, name, name, "request %s for %r answered %d: %s", ex.request_id,
                     ex.model, exc.status, exc.message, request_id=ex.request_id, model=ex.model,
                     status=exc.status, queued=len(ctx.queue), waited_s=waited)


def note_decision(ex: Exchange, candidates: list[str] | None, excluded: set[str] | None = None,
                  slot: int | None = None, match_chars: int = 0) -> None:
    """Debug level: where a request goes (``ex.server``, ``ex.instance``) and why (``ex.reason``)."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    log.debug("request %s model %r -> %s/%s (%s)", ex.request_id, ex.model, ex.server, ex.instance, ex.reason,
              extra=event("route", request_id=ex.request_id, model=ex.model, server=ex.server,
                          instance=ex.instance, reason=ex.reason, slot=slot, match_chars=match_chars or None,
                          candidates=candidates, excluded=sorted(excluded) if excluded else None,
                          retries=ex.retries or None,
                          queued_ms=round(ex.queue_wait_s * 1000) if ex.queue_wait_s else None))
