"""Model-bearing endpoints: parse once, resolve a route, count the slot, relay the answer.

The original bytes are forwarded unless a rewrite rule or an instance choice changed the
body, so most requests are never re-serialised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from ..core.config import ServerConfig
from ..core.identity import user_from_messages
from ..core.rewrite import apply_rewrites
from ..core.routing import Route, choose_route
from ..io.forward import relay_response
from ..state.exchange import Exchange
from .context import RESPONSE_STARTED, AppContext, context_of
from .body import model_of, parse_payload, read_limited
from .recording import begin_exchange, finish_exchange
from .upstream_headers import headers_for

# OpenAI-style paths must name a model; llama.cpp's native ones may omit it (-> fallback).
MODEL_REQUIRED = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/v1/messages", "/v1/rerank", "/v1/reranking", "/rerank", "/reranking",
)
MODEL_OPTIONAL = ("/completion", "/completions", "/infill", "/embedding", "/embeddings")


@dataclass(frozen=True)
class Placement:
    route: Route
    server: ServerConfig  # captured at decision time: a reload cannot pull it away mid-request
    body: bytes


async def handle_routed(request: web.Request) -> web.StreamResponse:
    ctx = context_of(request)
    ex = begin_exchange(ctx, request, request.path)
    error: BaseException | None = None
    try:
        raw = await read_limited(request, ctx.config.balancer.max_body_bytes)
        payload = parse_payload(raw)
        ex.model = model_of(payload, required=request.path in MODEL_REQUIRED)
        placement = place(ctx, ex, payload, raw)
        return await send(ctx, request, ex, placement)
    except BaseException as exc:
        error = exc
        raise
    finally:
        finish_exchange(ctx, ex, error)


def place(ctx: AppContext, ex: Exchange, payload: dict[str, Any], raw: bytes) -> Placement:
    """Decide server and instance; bind the sticky identity."""
    config = ctx.config
    ex.user = user_from_messages(payload.get("messages"))
    ex.identity = ex.user or ex.ip
    requested = ex.model
    if requested is None:
        route = Route(config.fallback, "", "fallback")
        return _placed(ctx, ex, route, raw)
    upstream_model, body = requested, payload
    rewritten = apply_rewrites(config.rewrites, requested, payload)
    if rewritten is not None:
        upstream_model, body = rewritten
    candidates = config.candidates_for(requested)
    views = {name: ctx.registry.view(name) for name in candidates or ()}
    route = choose_route(
        upstream_model, candidates, config.fallback, views,
        ctx.sticky.get(ex.identity, requested), ctx.clock.monotonic(), config.balancer.sticky_ttl_s,
    )
    if route.instance != upstream_model:
        body = {**body, "model": route.instance}
    if body is not payload:
        raw = orjson.dumps(body)
    if route.reason != "fallback":
        ctx.sticky.bind(ex.identity, ex.ip, requested, route.server, route.instance)
    served = ctx.registry.state(route.server).served or ()
    ex.model_label = upstream_model if upstream_model in served else "(other)"
    return _placed(ctx, ex, route, raw)


def _placed(ctx: AppContext, ex: Exchange, route: Route, raw: bytes) -> Placement:
    ex.server, ex.instance, ex.reason = route.server, route.instance, route.reason
    return Placement(route, ctx.config.servers[route.server], raw)


async def send(ctx: AppContext, request: web.Request, ex: Exchange, placement: Placement) -> web.StreamResponse:
    route = placement.route
    url = placement.server.model_base + request.path_qs
    headers = headers_for(ctx, request, placement.server, ex.request_id, body_replaced=True)
    async with ctx.registry.slot(route.server, route.instance or "(none)"):
        try:
            async with ctx.client.open(request.method, url, headers=headers, data=placement.body,
                                       server=route.server) as upstream:
                request[RESPONSE_STARTED] = True
                return await relay_response(request, upstream, route.server, ex)
        finally:
            if ex.model is not None and route.reason != "fallback":
                ctx.sticky.refresh(ex.identity, ex.model, route.server, route.instance)
