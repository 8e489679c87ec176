"""Middlewares that run before any handler: request id, request-target form, auth.

Then errors (http.errors) turn anything raised into OpenAI-style JSON.
"""
from __future__ import annotations

import re
import uuid

from aiohttp import web

from ..core.auth import Access, bearer_token
from .context import REQUEST_ID, context_of
from .errors import Handler, error_response

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

ADMIN_PATHS = frozenset({"/llmhealth-snapshot", "/access-log-stats", "/llmhealth-monitor", "/metrics"})
OPEN_PATHS = frozenset({"/llmhealth", "/favicon.ico"})


def access_for(path: str) -> Access:
    if path in OPEN_PATHS:
        return "open"
    if path in ADMIN_PATHS or path.startswith("/admin/"):
        return "admin"
    return "api"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take the client's X-Request-Id when it is sane, else make one; echo it on the answer."""
    given = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = given if _SAFE_ID.match(given) else uuid.uuid4().hex
    response = await handler(request)
    if not response.prepared:
        response.headers.setdefault("X-Request-Id", request[REQUEST_ID])
    return response


@web.middleware
async def target_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only origin-form targets (``/path``): no absolute-URI (open proxy) and no CONNECT."""
    if request.method == "CONNECT" or not request.raw_path.startswith("/"):
        return error_response(400, "only origin-form request targets are accepted (no proxying to other hosts)",
                              "invalid_request_error", "invalid_request_target")
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = context_of(request)
    access = access_for(request.path)
    token = bearer_token(request.headers.get("Authorization"), request.headers.get("x-api-key"))
    if token is None and request.path == "/llmhealth-monitor":
        token = request.query.get("key")  # a browser cannot add headers to a page load
    if not ctx.auth.allows(access, token):
        kind = "an admin key" if access == "admin" else "an API key"
        return error_response(401, f"this endpoint needs {kind}: send 'Authorization: Bearer <key>'",
                              "invalid_request_error", "invalid_api_key", {"WWW-Authenticate": "Bearer"})
    return await handler(request)
