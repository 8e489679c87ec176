"""Errors leave as OpenAI-style JSON with the right status, never as a traceback."""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import orjson
from aiohttp import web

from ..core.errors import BalancerError, error_envelope

log = logging.getLogger("llama_balancer.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, type_: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps(error_envelope(message, type_, code))
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def from_balancer_error(exc: BalancerError) -> web.Response:
    response = error_response(exc.status, exc.message, exc.type, exc.code, exc.headers)
    if exc.closes:
        response.force_close()
    return response


_HTTP_TYPES = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed"),
               413: ("invalid_request_error", "payload_too_large")}


async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run ``handler``; whatever it raises leaves as OpenAI-style JSON, never a traceback."""
    try:
        return await handler(request)
    except BalancerError as exc:
        return from_balancer_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        type_, code = _HTTP_TYPES.get(exc.status, ("invalid_request_error", f"http_{exc.status}"))
        return error_response(exc.status, exc.reason, type_, code)
    except ConnectionError:
        # The client went away (its answer cannot be written): nobody reads this one, and
        # aiohttp ends the connection quietly instead of logging a traceback.
        return web.Response(status=499)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal error in llama-balancer", "server_error", "internal_error")
