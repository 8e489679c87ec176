"""Model-bearing endpoints: parse once, resolve a route, count the slot, relay the answer.

The original bytes are forwarded unless a rewrite rule or an instance choice changed the
body, so most requests are never re-serialised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from ..core.identity import client_ip, user_from_messages
from ..core.rewrite import apply_rewrites
from ..core.routing import Route, choose_route
from ..io.forward import relay_response
from ..io.headers import upstream_request_headers
from .body import model_of, parse_payload, read_limited
from .context import RESPONSE_STARTED, AppContext, context_of

# OpenAI-style paths must name a model; llama.cpp's native ones may omit it (-> fallback).
MODEL_REQUIRED = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/v1/messages", "/v1/rerank", "/v1/reranking", "/rerank", "/reranking",
)
MODEL_OPTIONAL = ("/completion", "/completions", "/infill", "/embedding", "/embeddings")


@dataclass(frozen=True)
class Placement:
    route: Route
    requested: str | None
    identity: str
    ip: str
    user: str | None
    body: bytes


async def handle_routed(request: web.Request) -> web.StreamResponse:
    ctx = context_of(request)
    raw = await read_limited(request, ctx.config.balancer.max_body_bytes)
    payload = parse_payload(raw)
    requested = model_of(payload, required=request.path in MODEL_REQUIRED)
    placement = place(ctx, request, payload, requested, raw)
    return await send(ctx, request, placement)


def place(ctx: AppContext, request: web.Request, payload: dict[str, Any], requested: str | None, raw: bytes) -> Placement:
    """Decide server and instance; bind the sticky identity; record the access."""
    config = ctx.config
    ip = client_ip(request.headers.get("X-Forwarded-For"), request.remote)
    user = user_from_messages(payload.get("messages"))
    identity = user or ip
    if requested is None:
        route = Route(config.fallback, "", "fallback")
        return Placement(route, None, identity, ip, user, raw)
    upstream_model, body = requested, payload
    rewritten = apply_rewrites(config.rewrites, requested, payload)
    if rewritten is not None:
        upstream_model, body = rewritten
    candidates = config.candidates_for(requested)
    views = {name: ctx.registry.view(name) for name in candidates or ()}
    route = choose_route(
        upstream_model, candidates, config.fallback, views,
        ctx.sticky.get(identity, requested), ctx.clock.monotonic(), config.balancer.sticky_ttl_s,
    )
    if route.instance != upstream_model:
        body = {**body, "model": route.instance}
    if body is not payload:
        raw = orjson.dumps(body)
    if route.reason != "fallback":
        ctx.sticky.bind(identity, ip, requested, route.server, route.instance)
    ctx.stats.record(ip, requested, user, route.server, route.instance, route.reason)
    return Placement(route, requested, identity, ip, user, raw)


async def send(ctx: AppContext, request: web.Request, placement: Placement) -> web.StreamResponse:
    route = placement.route
    server = ctx.registry.state(route.server).server
    url = server.model_base + request.path_qs
    headers = upstream_request_headers(request.headers, body_replaced=True)
    async with ctx.registry.slot(route.server, route.instance or "(none)"):
        try:
            async with ctx.client.open(request.method, url, headers=headers, data=placement.body,
                                       server=route.server) as upstream:
                request[RESPONSE_STARTED] = True
                return await relay_response(request, upstream, route.server)
        finally:
            if placement.requested is not None and route.reason != "fallback":
                ctx.sticky.refresh(placement.identity, placement.requested, route.server, route.instance)
