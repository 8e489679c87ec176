"""The routing layer's log lines: each retry, failover and give-up (throttled), and at
debug level each routing decision with its reason. Kept apart so that the router reads as
the request's way, not as its commentary."""
from __future__ import annotations

import logging

from ..core.errors import BalancerError
from ..io.backend_watch import BackendWatch
from ..io.oplog import Notices, event
from ..state.exchange import Exchange
from ..state.queue import WaitQueue
from ..state.registry import Registry
from .call import ResumeElsewhere, RetryElsewhere

log = logging.getLogger("llama_balancer.routing")


class Notes:
    """Throttled operator lines about one request's way (``notices``), and the backend
    state changes a failed request causes (``watch``)."""

    def __init__(self, notices: Notices, watch: BackendWatch, registry: Registry, queue: WaitQueue) -> None:
        self.notices, self.watch, self.registry, self.queue = notices, watch, registry, queue

    def retry(self, ex: Exchange, failure: RetryElsewhere) -> None:
        """A failure before the first byte: the request goes on elsewhere; the backend's state
        change (suspect, circuit open) is the watch's line."""
        reason = failure.reason
        state = self.registry.find(failure.server)
        if state is not None:
            self.watch.observe(state, reason)
        self.notices.emit(log, logging.WARNING, "retry", f"retry:{failure.server}",
                          "request %s to %s failed before its answer began (%s); trying another backend",
                          ex.request_id, failure.server, reason, request_id=ex.request_id, model=ex.model,
                          server=failure.server, kind=failure.kind, attempt=ex.retries, reason=reason)

    def resume(self, ex: Exchange, broken: ResumeElsewhere) -> None:
        """A stream broke after its first byte; another backend is to continue it."""
        state = self.registry.find(broken.server)
        if state is not None:
            self.watch.observe(state, broken.error.message)
        self.notices.emit(log, logging.WARNING, "resume", f"resume:{broken.server}",
                          "stream %s broke on %s after bytes reached the client (%s); resuming it on another "
                          "backend", ex.request_id, broken.server, broken.error.message, request_id=ex.request_id,
                          model=ex.model, server=broken.server, resumes=len(ex.resumed_from),
                          reason=broken.error.message)

    def failover(self, ex: Exchange, first: str, to: str) -> None:
        self.notices.emit(log, logging.INFO, "failover", f"failover:{first}",
                          "request %s failed over from %s to %s after %d retr%s", ex.request_id, first, to,
                          ex.retries, "y" if ex.retries == 1 else "ies", request_id=ex.request_id, model=ex.model,
                          **{"from": first}, to=to, retries=ex.retries)

    def gave_up(self, ex: Exchange, server: str, reason: str) -> None:
        """The last try failed too: the client gets the error."""
        self.notices.emit(log, logging.WARNING, "upstream_failed", f"failed:{server}",
                          "request %s failed on %s after %d retr%s: %s", ex.request_id, server, ex.retries,
                          "y" if ex.retries == 1 else "ies", reason, request_id=ex.request_id, model=ex.model,
                          server=server, retries=ex.retries, reason=reason)

    def refused(self, ex: Exchange, exc: BalancerError) -> None:
        """A request answered 429 (queue full), 503 after its queue wait, or 503 with no backend."""
        name = {"queue_full": "queue_full", "queue_timeout": "queue_timeout"}.get(exc.code, "no_backend")
        waited = round(ex.queue_wait_s, 3) if ex.queue_wait_s else None
        self.notices.emit(log, logging.WARNING, name, name, "request %s for %r answered %d: %s", ex.request_id,
                          ex.model, exc.status, exc.message, request_id=ex.request_id, model=ex.model,
                          status=exc.status, queued=len(self.queue), waited_s=waited)

    @staticmethod
    def decision(ex: Exchange, candidates: list[str] | None, excluded: set[str] | None = None,
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
