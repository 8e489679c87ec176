"""Model-bearing endpoints: parse once, resolve, place (or queue), send, relay.

The original bytes are forwarded unless a rewrite rule, an instance choice or a slot pin
changed the body. A failure before the first byte reached the client (connect refused,
reset, timeout, or a 502/503/504 answer) is retried on the next eligible backend.

The logic is the same whoever carries the bytes: ``route_call`` takes the request as a
``Call`` and one backend attempt as an ``Attempt``. The native front (``front.py``) serves
most requests with its own; ``handle_routed`` is the aiohttp one, for connections that
aiohttp serves (those handed over by the front).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Protocol, TypeVar

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..core.config import ServerConfig
from ..core.errors import NoBackend, QueueFullError, QueueTimeout, UpstreamError
from ..core.identity import user_from_request
from ..core.placement import Place
from ..core.prefix import fingerprint
from ..core.rewrite import apply_rewrites
from ..io.forward import relay_response
from ..state.exchange import Exchange
from ..state.leases import Lease
from .body import model_of, parse_payload, read_limited
from .context import AppContext, context_of
from .decide import Resolved, obtain
from .notes import failure_reason, note_decision, note_failover, note_gave_up, note_refused, note_retry
from .recording import begin_exchange_for, finish_exchange
from .unknown import check_known
from .upstream_headers import headers_for

# OpenAI-style paths (Anthropic's /v1/messages too) and Ollama's native API must name a
# model; llama.cpp's native ones may omit it (-> fallback).
OLLAMA_PATHS = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings")
MODEL_REQUIRED = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/v1/messages", "/v1/rerank", "/v1/reranking", "/rerank", "/reranking", *OLLAMA_PATHS,
)
MODEL_OPTIONAL = ("/completion", "/completions", "/infill", "/embedding", "/embeddings")
# Endpoints that take llama-server's id_slot (pinning a slot whose cache holds the prompt).
# /v1/responses passes every field on to its chat completion; /v1/messages drops it.
SLOT_PINNABLE = frozenset({"/v1/chat/completions", "/v1/completions", "/completion", "/completions", "/infill",
                           "/v1/responses"})


R = TypeVar("R", covariant=True)


class RetryElsewhere(Exception):
    """A failure before any byte reached the client: another backend may take the request."""

    def __init__(self, server: str, kind: str, error: UpstreamError | None) -> None:
        super().__init__(kind)
        self.server, self.kind, self.error = server, kind, error


@dataclass
class Call:
    """A model-bearing request as the routing logic needs it, whoever parsed it."""

    method: str
    path: str
    path_qs: str
    headers: CIMultiDict[str] | CIMultiDictProxy[str]
    body: bytes


class Attempt(Protocol, Generic[R]):
    """Send ``body`` to ``server`` and relay its answer to the client. Before relaying, it
    raises RetryElsewhere for a retryable status (unless ``last_try``), else calls
    ``answered``; an UpstreamError before the answer started propagates."""

    def __call__(self, server: ServerConfig, call: Call, headers: CIMultiDict[str], body: bytes, ex: Exchange,
                 last_try: bool, answered: Callable[[], None]) -> Awaitable[R]: ...


async def handle_routed(request: web.Request) -> web.StreamResponse:
    """The aiohttp front for the routed endpoints."""
    ctx = context_of(request)
    ex = begin_exchange_for(ctx, request, request.path)
    error: BaseException | None = None
    try:
        options = ctx.config.balancer
        raw = await read_limited(request, options.max_body_bytes, options.client_header_timeout_s)
        call = Call(request.method, request.path, request.path_qs, request.headers, raw)
        return await route_call(ctx, call, ex, _aiohttp_attempt(ctx, request))
    except BaseException as exc:
        error = exc
        raise
    finally:
        finish_exchange(ctx, ex, error)


def _aiohttp_attempt(ctx: AppContext, request: web.Request) -> Attempt[web.StreamResponse]:
    retry_statuses = ctx.config.balancer.routing.retry_statuses

    async def attempt(server: ServerConfig, call: Call, headers: CIMultiDict[str], body: bytes, ex: Exchange,
                      last_try: bool, answered: Callable[[], None]) -> web.StreamResponse:
        name = ex.server or ""
        async with ctx.client.open(call.method, server.model_base + call.path_qs, headers=headers, data=body,
                                   server=name) as upstream:
            if not last_try and upstream.status in retry_statuses:
                raise RetryElsewhere(name, f"http_{upstream.status}", None)
            answered()
            return await relay_response(request, upstream, name, ex)
    return attempt


async def route_call(ctx: AppContext, call: Call, ex: Exchange, attempt: Attempt[R]) -> R:
    """Parse, resolve, place and send one model-bearing request; errors propagate as ours."""
    payload = parse_payload(call.body)
    ex.model = model_of(payload, required=call.path in MODEL_REQUIRED)
    ex.user = user_from_request(payload)
    ex.identity = ex.user or ex.ip
    if ex.model is None:
        return await _send_to_fallback(ctx, call, ex, call.body, attempt)
    resolved = resolve(ctx, ex.model, payload)
    check_known(ctx, resolved)
    try:
        return await _route_and_send(ctx, call, ex, resolved, attempt)
    except (QueueFullError, QueueTimeout, NoBackend) as exc:
        note_refused(ctx, ex, exc)
        raise


def resolve(ctx: AppContext, requested: str, payload: dict[str, Any]) -> Resolved:
    upstream_model, body = requested, payload
    rewritten = apply_rewrites(ctx.config.rewrites, requested, payload)
    if rewritten is not None:
        upstream_model, body = rewritten
    return Resolved(requested, upstream_model, body, rewritten is not None,
                    ctx.config.candidates_for(requested), fingerprint(body))


async def _send_to_fallback(ctx: AppContext, call: Call, ex: Exchange, raw: bytes, attempt: Attempt[R]) -> R:
    name = ctx.config.fallback
    ex.server, ex.instance, ex.reason = name, ex.model or "", "fallback"
    if ex.model is not None:
        ex.model_label = _label(ctx, name, ex.model)
    note_decision(ex, None)
    return await _send(ctx, call, ex, ctx.config.servers[name], raw, None, True, None, attempt)


async def _route_and_send(ctx: AppContext, call: Call, ex: Exchange, resolved: Resolved, attempt: Attempt[R]) -> R:
    if resolved.candidates is None:
        raw = orjson.dumps(resolved.body) if resolved.rewritten else call.body
        return await _send_to_fallback(ctx, call, ex, raw, attempt)
    routing = ctx.config.balancer.routing
    excluded: set[str] = set()
    first_failure: str | None = None
    while True:
        placed, lease = await obtain(ctx, ex, resolved, excluded)
        try:
            server = ctx.config.servers[placed.server]
            pinned = _pin(ctx, call.path, placed)
            body = _body_for(resolved, call.body, placed, pinned)
        except BaseException:
            if lease is not None:
                lease.release()  # the slot that would give it back was never entered
            raise
        ex.server, ex.instance, ex.reason = placed.server, placed.instance, placed.reason
        ex.model_label = _label(ctx, placed.server, resolved.upstream_model)
        note_decision(ex, resolved.candidates, excluded, pinned, placed.match_chars)
        last_try = ex.retries >= routing.max_retries or len(excluded) + 1 >= len(resolved.candidates)
        try:
            response = await _send(ctx, call, ex, server, body, pinned, last_try, resolved, attempt, lease)
        except RetryElsewhere as failure:
            _note_failure(ctx, ex, failure)
            first_failure = first_failure or failure.server
            excluded.add(failure.server)
            if failure.error is not None and last_try:
                note_gave_up(ctx, ex, failure.server, failure_reason(failure))
                raise failure.error from None
            continue
        except UpstreamError as exc:  # the last try failed before its answer began
            # Counted like any failure: a route's only (or last) server turns suspect and,
            # failing on, opens its circuit, as the ones retried elsewhere do.
            ctx.registry.record_failure(placed.server, routing.circuit_failures, routing.circuit_open_s)
            note_gave_up(ctx, ex, placed.server, exc.message)
            raise
        if first_failure is not None:
            ctx.metrics.failovers.labels(first_failure, placed.server).inc()
            note_failover(ctx, ex, first_failure, placed.server)
        return response


def _note_failure(ctx: AppContext, ex: Exchange, failure: RetryElsewhere) -> None:
    routing = ctx.config.balancer.routing
    ctx.registry.record_failure(failure.server, routing.circuit_failures, routing.circuit_open_s)
    ctx.metrics.retries.labels(failure.server, failure.kind).inc()
    ex.retries += 1
    note_retry(ctx, ex, failure)


def _pin(ctx: AppContext, path: str, placed: Place) -> int | None:
    if placed.id_slot is None or path not in SLOT_PINNABLE:
        return None
    return placed.id_slot if ctx.registry.state(placed.server).kind == "llama.cpp" else None


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


def _label(ctx: AppContext, server: str, upstream_model: str) -> str:
    """The model as a metric label: only names the backend serves, so labels stay bounded."""
    served = ctx.registry.state(server).served or ()
    return upstream_model if upstream_model in served else "(other)"


async def _send(ctx: AppContext, call: Call, ex: Exchange, server: ServerConfig, body: bytes, pinned: int | None,
                last_try: bool, resolved: Resolved | None, attempt: Attempt[R], lease: Lease | None = None) -> R:
    """One attempt on one backend, holding its slot (and the lease, which the slot gives
    back); ``resolved`` is None for the fallback path (no routing state). Raises
    RetryElsewhere for a failure before the answer started, unless ``last_try``."""
    name, instance = ex.server or "", ex.instance or ""
    try:
        headers = headers_for(ctx, call.headers, server, ex.request_id, body_replaced=True)
    except BaseException:
        if lease is not None:
            lease.release()
        raise

    def answered() -> None:
        ctx.registry.record_success(name)
        if resolved is not None:
            ctx.sticky.bind(ex.identity, ex.ip, resolved.requested, name, instance)

    async with ctx.registry.slot(name, instance or "(none)", pinned, lease):
        if resolved is not None:
            ctx.affinity.record(name, instance, pinned, resolved.fingerprint)
        try:
            return await attempt(server, call, headers, body, ex, last_try, answered)
        except UpstreamError as exc:
            if last_try:
                raise
            raise RetryElsewhere(name, exc.kind, exc) from None
        finally:
            if resolved is not None:
                ctx.sticky.refresh(ex.identity, resolved.requested, name, instance)
