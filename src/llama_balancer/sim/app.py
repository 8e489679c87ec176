"""The aiohttp application: the route table in one place, llama-style errors and headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from . import completions, control, info, passthrough
from .completions import STATE_KEY, json_response
from .parse import SimHTTPError
from .state import SimState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/health", info.handle_health),
    ("GET", "/v1/health", info.handle_health),
    ("GET", "/props", info.handle_props),
    ("GET", "/models", info.handle_models),
    ("GET", "/v1/models", info.handle_models),
    ("GET", "/slots", info.handle_slots),
    ("GET", "/metrics", info.handle_metrics),
    ("GET", "/llmhealth", info.handle_llmhealth),
    ("POST", "/v1/chat/completions", completions.handle_chat),
    ("POST", "/chat/completions", completions.handle_chat),
    ("POST", "/v1/completions", completions.handle_text),
    ("POST", "/completions", completions.handle_native),
    ("POST", "/completion", completions.handle_native),
    ("POST", "/v1/embeddings", completions.handle_embeddings),
    ("POST", "/embeddings", completions.handle_embeddings),
    ("GET", "/sim/control", control.handle_control_get),
    ("POST", "/sim/control", control.handle_control_post),
    ("GET", "/sim/events", control.handle_events_get),
    ("DELETE", "/sim/events", control.handle_events_delete),
    ("*", "/sim/echo", passthrough.handle_echo),
    ("*", "/sim/echo/{tail:.*}", passthrough.handle_echo),
    ("GET", "/sim/stream", passthrough.handle_stream),
)


@web.middleware
async def _llama_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown paths (and methods) answer llama-server's 404 JSON, not aiohttp's text."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        err = SimHTTPError(404, "File Not Found", "not_found_error")
        return json_response(err.body(), status=404)


async def _llama_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every llama-server response carries, plus which sim answered."""
    response.headers["Server"] = "llama.cpp"
    response.headers["Access-Control-Allow-Origin"] = ""
    response.headers["X-Sim-Server"] = request.app[STATE_KEY].config.name


def build_app(state: SimState) -> web.Application:
    """An application serving `state`; run it with handler_cancellation=True."""
    app = web.Application(middlewares=[_llama_errors], client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.on_response_prepare.append(_llama_headers)
    return app
