"""Everything that is not routed goes to the fallback server, bodies streamed both ways."""
from __future__ import annotations

from aiohttp import web

from ..core.errors import PayloadTooLarge
from ..io.forward import relay_response
from ..io.headers import upstream_request_headers
from .context import RESPONSE_STARTED, context_of


async def handle_proxy(request: web.Request) -> web.StreamResponse:
    ctx = context_of(request)
    config = ctx.config
    limit = config.balancer.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes")
    server = config.servers[config.fallback]
    url = server.model_base + request.path_qs
    headers = upstream_request_headers(request.headers, body_replaced=False)
    data = _limited_body(request, limit) if request.body_exists else None
    async with ctx.client.open(request.method, url, headers=headers, data=data, server=config.fallback) as upstream:
        request[RESPONSE_STARTED] = True
        return await relay_response(request, upstream, config.fallback)


async def _limited_body(request: web.Request, limit: int):
    """The client's body as it arrives; a chunked body that grows past the limit is cut off."""
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        yield chunk
