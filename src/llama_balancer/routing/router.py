"""A model-bearing request's way, whoever carries its bytes: parse once, resolve, place (or
queue), send through the data path's ``Attempt``, retry elsewhere before the first byte.

The original bytes are forwarded unless a rewrite rule, an instance choice or a slot pin
changed the body. A failure before the answer was accepted (connect refused, reset, timeout,
or a status in ``retry_statuses``) is retried on the next eligible backend; none after.

Everything the router touches is handed to it (DESIGN.md: "the routing layer takes its
dependencies explicitly"): the current config as a callable (a reload replaces it whole),
the stores, one clock, and the recorder the data paths use to open and close a record.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import orjson

from ..core.auth import AuthPolicy
from ..core.config import Config, ServerConfig
from ..core.errors import NoBackend, QueueFullError, QueueTimeout, UpstreamError
from ..core.identity import user_from_request
from ..core.placement import Place
from ..io.backend_watch import BackendWatch
from ..io.observability import Metrics
from ..io.oplog import Notices
from ..state.affinity import AffinityStore
from ..state.clock import Clock
from ..state.exchange import Exchange
from ..state.leases import Lease
from ..state.queue import WaitQueue
from ..state.registry import Registry
from ..state.sticky import StickyStore
from .call import MODEL_REQUIRED, SLOT_PINNABLE, Attempt, Call, ResumeElsewhere, RetryElsewhere
from .decide import Placer
from .notes import Notes
from .recording import Recorder
from .resolve import Resolved, model_of, parse_payload, resolve
from .unknown import check_known
from .upstream_headers import headers_for

R = TypeVar("R")


class Router:
    """Routes one request at a time through an ``Attempt``; state lives in the stores."""

    def __init__(self, *, config: Callable[[], Config], clock: Clock, registry: Registry, sticky: StickyStore,
                 affinity: AffinityStore, queue: WaitQueue, metrics: Metrics, notices: Notices,
                 watch: BackendWatch, auth: Callable[[], AuthPolicy], recorder: Recorder) -> None:
        self._config, self._auth = config, auth
        self.clock, self.registry, self.sticky, self.affinity = clock, registry, sticky, affinity
        self.metrics, self.notices, self.recorder = metrics, notices, recorder
        self.placer = Placer(config, clock, registry, sticky, affinity, queue)
        self.notes = Notes(notices, watch, registry, queue)

    async def route(self, call: Call, ex: Exchange, attempt: Attempt[R]) -> R:
        """Parse, resolve, place and send one model-bearing request; errors propagate as ours."""
        config = self._config()
        payload = call.payload = parse_payload(call.body)
        ex.model = model_of(payload, required=call.path in MODEL_REQUIRED)
        ex.user = user_from_request(payload)
        ex.identity = ex.user or ex.ip
        if ex.model is None:
            return await self._to_fallback(config, call, ex, call.body, attempt)
        resolved = resolve(config, ex.model, payload)
        check_known(self.registry, self.notices, resolved, config.balancer.unknown_model == "reject")
        if resolved.candidates is None:
            raw = orjson.dumps(resolved.body) if resolved.rewritten else call.body
            return await self._to_fallback(config, call, ex, raw, attempt)
        try:
            return await self._place_and_send(call, ex, resolved, attempt)
        except (QueueFullError, QueueTimeout, NoBackend) as exc:
            if ex.resumed_from:
                self.metrics.resumes.labels(ex.resumed_from[-1], "failed").inc()
            self.notes.refused(ex, exc)
            raise

    async def _to_fallback(self, config: Config, call: Call, ex: Exchange, raw: bytes, attempt: Attempt[R]) -> R:
        """No model named, or no pattern matches it: the fallback server, one try."""
        name = config.fallback
        ex.server, ex.instance, ex.reason = name, ex.model or "", "fallback"
        if ex.model is not None:
            ex.model_label = self._label(name, ex.model)
        self.notes.decision(ex, None)
        try:
            return await self._send(config, call, ex, config.servers[name], raw, None, True, None, attempt)
        except ResumeElsewhere as broken:  # the fallback is the only server: nobody continues it
            self.metrics.resumes.labels(broken.server, "failed").inc()
            raise broken.error from None

    async def _place_and_send(self, call: Call, ex: Exchange, resolved: Resolved, attempt: Attempt[R]) -> R:
        """Try placements until one is accepted; each failure excludes its server."""
        excluded: set[str] = set()
        first_failure: str | None = None
        ex.prompt_chars = resolved.fingerprint.chars
        while True:
            placed, lease = await self.placer.obtain(ex, resolved, excluded)
            config = self._config()  # current: a reload while queued may have added the server
            routing = config.balancer.routing
            try:
                server = config.servers[placed.server]
                pinned = self._pin(call.path, placed)
                body = _body_for(resolved, call.body, placed, pinned)
            except BaseException:
                if lease is not None:
                    lease.release()  # the slot that would give it back was never entered
                raise
            ex.server, ex.instance, ex.reason = placed.server, placed.instance, placed.reason
            ex.model_label = self._label(placed.server, resolved.upstream_model)
            self.notes.decision(ex, resolved.candidates, excluded, pinned, placed.match_chars)
            last_try = ex.retries >= routing.max_retries or len(excluded) + 1 >= len(resolved.candidates or ())
            try:
                response = await self._send(config, call, ex, server, body, pinned, last_try, resolved, attempt,
                                            lease)
            except ResumeElsewhere as broken:
                self.registry.record_failure(broken.server, routing.circuit_failures, routing.circuit_open_s)
                ex.resumed_from.append(broken.server)
                excluded.add(broken.server)
                if len(excluded) >= len(resolved.candidates or ()):
                    self.metrics.resumes.labels(broken.server, "failed").inc()
                    self.notes.gave_up(ex, broken.server, broken.error.message)
                    raise broken.error from None
                self.notes.resume(ex, broken)
                continue
            except RetryElsewhere as failure:
                self._failed(config, ex, failure)
                first_failure = first_failure or failure.server
                excluded.add(failure.server)
                if failure.error is not None and last_try:
                    self.notes.gave_up(ex, failure.server, failure.reason)
                    raise failure.error from None
                continue
            except UpstreamError as exc:  # the last try failed, or an accepted answer broke off
                # Counted like any failure: a route's only (or last) server turns suspect and,
                # failing on, opens its circuit, as the ones retried elsewhere do.
                if ex.resumed_from:
                    self.metrics.resumes.labels(ex.resumed_from[-1], "failed").inc()
                self.registry.record_failure(placed.server, routing.circuit_failures, routing.circuit_open_s)
                self.notes.gave_up(ex, placed.server, exc.message)
                raise
            if ex.resumed_from:
                outcome = "failed" if ex.outcome == "upstream_error" else "resumed"
                self.metrics.resumes.labels(ex.resumed_from[-1], outcome).inc()
            if first_failure is not None:
                self.metrics.failovers.labels(first_failure, placed.server).inc()
                self.notes.failover(ex, first_failure, placed.server)
            return response

    def _failed(self, config: Config, ex: Exchange, failure: RetryElsewhere) -> None:
        """A try failed before its answer was accepted: passive health, metrics, the log."""
        routing = config.balancer.routing
        self.registry.record_failure(failure.server, routing.circuit_failures, routing.circuit_open_s)
        self.metrics.retries.labels(failure.server, failure.kind).inc()
        ex.retries += 1
        self.notes.retry(ex, failure)

    def _pin(self, path: str, placed: Place) -> int | None:
        if placed.id_slot is None or path not in SLOT_PINNABLE:
            return None
        return placed.id_slot if self.registry.state(placed.server).kind == "llama.cpp" else None

    def _label(self, server: str, upstream_model: str) -> str:
        """The model as a metric label: only names the backend serves, so labels stay bounded."""
        state = self.registry.find(server)
        served = (state.served if state is not None else None) or ()
        return upstream_model if upstream_model in served else "(other)"

    async def _send(self, config: Config, call: Call, ex: Exchange, server: ServerConfig, body: bytes,
                    pinned: int | None, last_try: bool, resolved: Resolved | None, attempt: Attempt[R],
                    lease: Lease | None = None) -> R:
        """One attempt on one backend, holding its slot (and the lease, which the slot gives
        back); ``resolved`` is None for the fallback path (no routing state). Raises
        RetryElsewhere for a failure before the answer was accepted, unless ``last_try``."""
        name, instance = ex.server or "", ex.instance or ""
        try:
            headers = headers_for(call.headers, server, ex.request_id, True, self._auth().enabled)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        answered = _Answered(self, ex, resolved, last_try, config.balancer.routing.retry_statuses)
        uncached = None  # of the prompt, what the pinned slot does not hold: its prefill there
        if pinned is not None and resolved is not None:
            fp = resolved.fingerprint
            uncached = fp.chars - self.affinity.slot_match(name, (pinned,), fp).get(pinned, 0)
        async with self.registry.slot(name, instance or "(none)", pinned, lease, uncached):
            if resolved is not None:
                self.affinity.record(name, instance, pinned, resolved.fingerprint)
            try:
                response = await attempt(server, call, headers, body, ex, last_try, answered)
            except UpstreamError as exc:
                if last_try or answered.accepted:  # the client may have bytes of this answer: no retry
                    raise
                raise RetryElsewhere(name, exc.kind, exc) from None
            finally:
                if resolved is not None:
                    self.sticky.refresh(ex.identity, resolved.requested, name, instance)
            if answered.refused is not None:  # the data path was told by accept(): try elsewhere
                raise RetryElsewhere(name, f"http_{answered.refused}", None)
            return response


class _Answered:
    """One try's ``Answered`` (routing.call): the retry decision on the answer's status, and
    the success it records once the answer is accepted."""

    __slots__ = ("_router", "_ex", "_resolved", "_last_try", "_retry_statuses", "accepted", "refused")

    def __init__(self, router: Router, ex: Exchange, resolved: Resolved | None, last_try: bool,
                 retry_statuses: list[int]) -> None:
        self._router, self._ex, self._resolved = router, ex, resolved
        self._last_try, self._retry_statuses = last_try, retry_statuses
        self.accepted = False
        self.refused: int | None = None  # a status accept() turned down

    def accept(self, status: int) -> bool:
        if not self.accepted and not self._last_try and status in self._retry_statuses:
            self.refused = status
            return False
        self._accepted()
        return True

    def _accepted(self) -> None:
        if self.accepted:
            return
        self.accepted = True
        ex, resolved, name = self._ex, self._resolved, self._ex.server or ""
        self._router.registry.record_success(name)
        if resolved is not None:
            self._router.sticky.bind(ex.identity, ex.ip, resolved.requested, name, ex.instance or "")


def _body_for(resolved: Resolved, raw: bytes, placed: Place, pinned: int | None) -> bytes:
    """The original bytes when nothing changed; otherwise the body re-encoded once."""
    body = resolved.body
    if placed.instance != resolved.upstream_model:
        body = {**body, "model": placed.instance}
    if pinned is not None:
        body = {**body, "id_slot": pinned}
    if body is resolved.body and not resolved.rewritten:
        return raw
    return orjson.dumps(body)
