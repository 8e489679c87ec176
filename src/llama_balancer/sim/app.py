"""The aiohttp application: the route table in one place, llama-style errors and headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from . import completions, control, info, passthrough
from .completions import STATE_KEY, json_response
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
    ("POST", "/apply-template", info.handle_apply_template),
    ("POST", "/v1/chat/completions", completions.handle_chat),
    ("POST", "/chat/completions", completions.handle_chat),
    ("POST", "/v1/completions", completions.handle_text),
    ("POST", "/completions", completions.handle_native),
    ("POST", "/completion", completions.handle_native),
    ("POST", "/v1/embeddings", completions.handle_embeddings),
    ("POST", "/embeddings", completions.handle_embeddings),
    ("POST", "/v1/messages", completions.handle_messages),
    ("POST", "/v1/responses", completions.handle_responses),
    ("POST", "/responses", completions.handle_responses),
    ("POST", "/api/chat", completions.handle_ollama_chat),
    ("POST", "/api/generate", completions.handle_ollama_generate),
    ("POST", "/api/embed", completions.handle_ollama_embed),
    ("POST", "/api/embeddings", completions.handle_ollama_embeddings),
    ("GET", "/sim/control", control.handle_control_get),
    ("POST", "/sim/control", control.handle_control_post),
    ("GET", "/sim/events", control.handle_events_get),
    ("DELETE", "/sim/events", control.handle_events_delete),
    ("*", "/sim/echo", passthrough.handle_echo),
    ("*", "/sim/echo/{tail:.*}", passthrough.handle_echo),
    ("GET", "/sim/stream", passthrough.handle_stream),
)


NOT_FOUND = {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}


@web.middleware
async def _llama_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown paths (and methods) answer llama-server's 404 JSON, not aiohttp's text."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        return json_response(NOT_FOUND, status=404)


def _last_on_connection(request: web.Request, max_requests: int) -> bool:
    """Whether this is the connection's ``max_requests``-th request (0: no limit). aiohttp
    counts them per connection (a private field: without it, no limit)."""
    count = getattr(request.protocol, "_request_count", 0)
    return max_requests > 0 and isinstance(count, int) and count >= max_requests


async def _llama_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every llama-server response carries, plus which sim answered, and no Date
    (aiohttp's; llama-server sends none). Like the real one, an error answer (4xx, 5xx) and a
    connection's last request close the connection; any other answer names the keep-alive
    limits. Runs after aiohttp has prepared the headers, just before they are written."""
    cfg = request.app[STATE_KEY].config
    headers = response.headers
    headers["Server"] = "llama.cpp"
    headers["Access-Control-Allow-Origin"] = ""
    headers["X-Sim-Server"] = cfg.name
    headers.popall("Date", None)
    if response.status >= 400 or _last_on_connection(request, cfg.keepalive_max_requests):
        response.force_close()
        headers["Connection"] = "close"
    elif request.keep_alive and response.keep_alive is not False:
        timeout = cfg.keepalive_timeout_s if cfg.keepalive_timeout_s > 0 else 75
        limit = f", max={cfg.keepalive_max_requests}" if cfg.keepalive_max_requests > 0 else ""
        response.headers["Keep-Alive"] = f"timeout={timeout:g}{limit}"


def build_app(state: SimState) -> web.Application:
    """An application serving `state`; run it with handler_cancellation=True."""
    app = web.Application(middlewares=[_llama_errors], client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.on_response_prepare.append(_llama_headers)
    return app
