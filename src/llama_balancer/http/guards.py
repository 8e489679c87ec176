"""The one middleware in front of every handler: request id, request-target form, auth,
then errors as OpenAI-style JSON. One layer, not four: it runs on every request."""
from __future__ import annotations

import asyncio
import re
from secrets import token_hex

from aiohttp import web

from ..core.auth import Access, AuthPolicy, bearer_token
from ..core.errors import BalancerError
from ..h1.requests import MalformedRequest
from .context import REQUEST_ID, AppContext, context_of
from .cors import preflight_answer
from .errors import Handler, answer_errors, error_response, from_balancer_error
from .handoff import handed_off

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_NOT_VISIBLE = re.compile(r"[^\x21-\x7e]")  # a request target is visible ASCII (RFC 9112 3.2)

ADMIN_PATHS = frozenset({"/llmhealth-snapshot", "/access-log-stats", "/llmhealth-series", "/llmhealth-monitor",
                         "/metrics"})
OPEN_PATHS = frozenset({"/llmhealth", "/favicon.ico", "/livez", "/readyz"})
OPEN_METHODS = frozenset({"GET", "HEAD"})  # what the open endpoints serve


def access_for(method: str, path: str) -> Access:
    """Open only for the method an open endpoint serves: any other method on its path falls
    through to the catch-all proxy, which must never be reached without a key."""
    if path in OPEN_PATHS and method in OPEN_METHODS:
        return "open"
    if path in ADMIN_PATHS or path.startswith("/admin/"):
        return "admin"
    return "api"


class Unauthorized(BalancerError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


def request_id_from(given: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a sane token, else a fresh one."""
    return given if given and _SAFE_ID.match(given) else token_hex(16)


def auth_refusal(auth: AuthPolicy, method: str, path: str, token: str | None) -> Unauthorized | None:
    """None when ``token`` may call ``method path`` (always, with no keys configured)."""
    if not auth.enabled:
        return None
    access = access_for(method, path)
    if auth.allows(access, token):
        return None
    kind = "an admin key" if access == "admin" else "an API key"
    return Unauthorized(f"this endpoint needs {kind}: send 'Authorization: Bearer <key>'",
                        headers={"WWW-Authenticate": "Bearer"})


@web.middleware
async def front_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response: web.StreamResponse | None = None
    guard = handed_off(request)
    if guard is not None:
        guard.request_started()  # its head arrived: the head deadline stops
        task = asyncio.current_task()  # aiohttp's task for this request: it also writes the answer
        if task is not None:
            task.add_done_callback(lambda done: guard.request_done(
                not done.cancelled() and response is not None and response.keep_alive is not False))
    request_id = request[REQUEST_ID] = request_id_from(request.headers.get("X-Request-Id"))
    response = _refusal(request)
    if response is None:
        response = await answer_errors(request, handler)
    if not response.prepared:
        response.headers.setdefault("X-Request-Id", request_id)
    return response


def _refusal(request: web.Request) -> web.Response | None:
    """A request line as the native front would take it (visible ASCII, HTTP/1.x: whichever
    parser aiohttp runs), only origin-form targets (``/path``: no absolute-URI, no CONNECT:
    never an open proxy), a CORS preflight answered here (browsers send no key on one), and
    the right key where keys are configured."""
    ctx = context_of(request)
    if request.version < (1, 0):
        return _refused(ctx, MalformedRequest("no HTTP version in the request line (HTTP/0.9 is not served)"))
    if _NOT_VISIBLE.search(request.raw_path):
        return _refused(ctx, MalformedRequest("control character or non-ASCII byte in the request target"))
    if request.method == "CONNECT" or not request.raw_path.startswith("/"):
        ctx.events.add(ctx.clock.monotonic(), "4xx", "invalid_request_target")
        return error_response(400, "only origin-form request targets are accepted (no proxying to other hosts)",
                              "invalid_request_error", "invalid_request_target")
    preflight = preflight_answer(request)
    if preflight is not None:
        return preflight
    if not ctx.auth.enabled:
        return None
    token = bearer_token(request.headers.get("Authorization"), request.headers.get("x-api-key"))
    if token is None and request.path == "/llmhealth-monitor":
        token = request.query.get("key")  # a browser cannot add headers to a page load
    refusal = auth_refusal(ctx.auth, request.method, request.path, token)
    return None if refusal is None else _refused(ctx, refusal)


def _refused(ctx: AppContext, error: BalancerError) -> web.Response:
    ctx.recorder.refused(error)
    return from_balancer_error(error)
