"""The one middleware in front of every handler: request id, request-target form, auth,
then errors as OpenAI-style JSON. One layer, not four: it runs on every request."""
from __future__ import annotations

import re
from secrets import token_hex

from aiohttp import web

from ..core.auth import Access, bearer_token
from .context import REQUEST_ID, context_of
from .errors import Handler, answer_errors, error_response

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
async def front_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")
    request_id = request[REQUEST_ID] = given if _SAFE_ID.match(given) else token_hex(16)
    response = _refusal(request)
    if response is None:
        response = await answer_errors(request, handler)
    if not response.prepared:
        response.headers.setdefault("X-Request-Id", request_id)
    return response


def _refusal(request: web.Request) -> web.Response | None:
    """Only origin-form targets (``/path``: no absolute-URI, no CONNECT: never an open proxy),
    and the right key where keys are configured."""
    if request.method == "CONNECT" or not request.raw_path.startswith("/"):
        return error_response(400, "only origin-form request targets are accepted (no proxying to other hosts)",
                              "invalid_request_error", "invalid_request_target")
    ctx = context_of(request)
    if not ctx.auth.enabled:
        return None
    access = access_for(request.path)
    token = bearer_token(request.headers.get("Authorization"), request.headers.get("x-api-key"))
    if token is None and request.path == "/llmhealth-monitor":
        token = request.query.get("key")  # a browser cannot add headers to a page load
    if ctx.auth.allows(access, token):
        return None
    kind = "an admin key" if access == "admin" else "an API key"
    return error_response(401, f"this endpoint needs {kind}: send 'Authorization: Bearer <key>'",
                          "invalid_request_error", "invalid_api_key", {"WWW-Authenticate": "Bearer"})
