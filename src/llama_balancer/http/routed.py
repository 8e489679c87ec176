"""The aiohttp front for the model-bearing endpoints, for connections that aiohttp serves
(those the native front hands over): read the body, then the routing layer's ``Router``
does the rest through this module's ``Attempt`` (an aiohttp client request, relayed by
``io.forward``). The native front (``front.py``) calls the same router with its own.
"""
from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from ..core.config import ServerConfig
from ..io.forward import relay_response
from ..routing.call import Answered, Attempt, Call
from ..state.exchange import Exchange
from .body import read_limited
from .context import AppContext, context_of
from .recording import begin_exchange_for


async def handle_routed(request: web.Request) -> web.StreamResponse:
    """Read the body within its limits, route it, record the exchange however it ends."""
    ctx = context_of(request)
    ex = begin_exchange_for(ctx, request, request.path)
    error: BaseException | None = None
    try:
        options = ctx.config.balancer
        raw = await read_limited(request, options.max_body_bytes, options.client_header_timeout_s)
        call = Call(request.method, request.path, request.path_qs, request.headers, raw)
        return await ctx.router.route(call, ex, _aiohttp_attempt(ctx, request))
    except BaseException as exc:
        error = exc
        raise
    finally:
        ctx.recorder.finish(ex, error)


def _aiohttp_attempt(ctx: AppContext, request: web.Request) -> Attempt[web.StreamResponse]:
    async def attempt(server: ServerConfig, call: Call, headers: CIMultiDict[str], body: bytes, ex: Exchange,
                      last_try: bool, answered: Answered) -> web.StreamResponse:
        name = ex.server or ""
        async with ctx.client.open(call.method, server.model_base + call.path_qs, headers=headers, data=body,
                                   server=name) as upstream:
            answered(upstream.status)  # raises RetryElsewhere for a status retried elsewhere
            return await relay_response(request, upstream, name, ex)
    return attempt
