"""The one middleware in front of every handler: request id, request-target form, auth,
then errors as OpenAI-style JSON. One layer, not four: it runs on every request."""
from __future__ import annotations

import re
from secrets import token_hex

from aiohttp import web

from ..core.auth import Access, AuthPolicy, bearer_token
from ..core.errors import BalancerError
from .context import REQUEST_ID, context_of
from .errors import Handler, answer_errors, error_response, from_balancer_error

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

ADMIN_PATHS = frozenset({"/llmhealth-snapshot", "/access-log-stats", "/llmhealth-monitor", "/metrics"})
OPEN_PATHS = frozenset({"/llmhealth", "/favicon.ico"})


def access_for(path: str) -> Access:
    if path in OPEN_PATHS:
        return "open"
    if path in ADMIN_PATHS or path.startswith("/admin/"):
        return "admin"
    return "api"


class Unauthorized(BalancerError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


def request_id_from(given: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a sane token, else a fresh one."""
    return given if given and _SAFE_ID.match(given) else token_hex(16)


def auth_refusal(auth: AuthPolicy, path: str, token: str | None) -> Unauthorized | None:
    """None when ``token`` may call ``path`` (always, with no keys configured)."""
    if not auth.enabled:
        return None
    access = access_for(path)
    if auth.allows(access, token):
        return None
    kind = "an admin key" if access == "admin" else "an API key"
    return Unauthorized(f"this endpoint needs {kind}: send 'Authorization: Bearer <key>'",
                        headers={"WWW-Authenticate": "Bearer"})


@web.middleware
async def front_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request[REQUEST_ID] = request_id_from(request.headers.get("X-Request-Id"))
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
    token = bearer_token(request.headers.get("Authorization"), request.headers.get("x-api-key"))
    if token is None and request.path == "/llmhealth-monitor":
        token = request.query.get("key")  # a browser cannot add headers to a page load
    refusal = auth_refusal(ctx.auth, request.path, token)
    return None if refusal is None else from_balancer_error(refusal)
