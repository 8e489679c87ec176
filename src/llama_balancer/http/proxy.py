"""Everything that is not routed goes to the fallback server, bodies streamed both ways."""
from __future__ import annotations

from aiohttp import web

from ..core.errors import PayloadTooLarge
from ..io.forward import relay_response
from ..routing.upstream_headers import headers_for
from .body import body_chunks
from .context import context_of
from .recording import begin_exchange_for


async def handle_proxy(request: web.Request) -> web.StreamResponse:
    ctx = context_of(request)
    config = ctx.config
    ex = begin_exchange_for(ctx, request, "(proxy)")
    ex.server, ex.reason = config.fallback, "fallback"
    error: BaseException | None = None
    try:
        limit = config.balancer.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes")
        server = config.servers[config.fallback]
        headers = headers_for(request.headers, server, ex.request_id, body_replaced=False,
                              keys_checked=ctx.auth.enabled)
        data = body_chunks(request, limit, config.balancer.client_header_timeout_s) if request.body_exists else None
        async with ctx.client.open(request.method, server.model_base + request.path_qs, headers=headers,
                                   data=data, server=config.fallback) as upstream:
            return await relay_response(request, upstream, config.fallback, ex)
    except BaseException as exc:
        error = exc
        raise
    finally:
        ctx.recorder.finish(ex, error)
