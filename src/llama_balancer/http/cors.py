"""CORS on the aiohttp side (``core.cors`` decides): preflights answered in the middleware,
the headers added to every answer just before it is sent. The native front adds the same
headers itself (``front.py``, ``answer_lines``)."""
from __future__ import annotations

import orjson
from aiohttp import web

from ..core.cors import answer_headers, is_cors_header, is_preflight, preflight_headers
from ..core.errors import error_envelope
from .context import CONTEXT, context_of


def preflight_answer(request: web.Request) -> web.Response | None:
    """The balancer's answer to a CORS preflight when origins are configured, else None
    (the request goes on: without ``cors_origins`` a preflight is proxied as before)."""
    origins = context_of(request).config.balancer.cors_origins
    origin = request.headers.get("Origin")
    if not origins or not is_preflight(request.method, origin, request.headers.get("Access-Control-Request-Method")):
        return None
    headers = preflight_headers(origins, origin, request.headers.get("Access-Control-Request-Headers"))
    if headers is None:
        body = error_envelope(f"origin {origin!r} is not allowed (balancer.cors_origins)",
                              "invalid_request_error", "cors_origin_not_allowed")
        return web.Response(status=403, body=orjson.dumps(body), content_type="application/json",
                            headers={"Vary": "Origin"})
    return web.Response(status=204, headers=headers)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the backend's CORS headers out, ours in (origins configured)."""
    ctx = request.app.get(CONTEXT)
    origins = ctx.config.balancer.cors_origins if ctx is not None else ()
    if not origins or response.status == 204 and response.headers.get("Access-Control-Allow-Methods"):
        return  # no CORS of ours, or our own preflight answer
    for name in [name for name in response.headers if is_cors_header(name)]:
        del response.headers[name]
    for name, value in answer_headers(origins, request.headers.get("Origin")):
        if name == "Vary" and "Vary" in response.headers:
            if "origin" not in response.headers["Vary"].lower():
                response.headers["Vary"] = response.headers["Vary"] + ", " + value
        else:
            response.headers[name] = value


def answer_lines(origins: list[str], origin: str | None) -> list[str]:
    """The same headers as ``Name: value`` lines, for answers the native front writes."""
    return [f"{name}: {value}" for name, value in answer_headers(origins, origin)] if origins else []
