"""The route table, in one place."""
from __future__ import annotations

from aiohttp import web

from .admin import (handle_access_stats, handle_favicon, handle_livez, handle_llmhealth, handle_metrics,
                    handle_models, handle_monitor, handle_readyz, handle_reload, handle_series, handle_snapshot)
from .context import CONTEXT, AppContext
from .cors import add_cors_headers
from .guards import front_middleware
from .proxy import handle_proxy
from ..routing.call import ROUTED_PATHS
from .routed import handle_misdirected


def build_app(ctx: AppContext) -> web.Application:
    # Body limits are enforced per handler (413 as OpenAI JSON), so aiohttp's own cap is off.
    app = web.Application(middlewares=[front_middleware], client_max_size=0)
    app[CONTEXT] = ctx
    app.on_response_prepare.append(add_cors_headers)
    router = app.router
    router.add_get("/llmhealth", handle_llmhealth)
    router.add_get("/llmhealth-snapshot", handle_snapshot)
    router.add_get("/llmhealth-monitor", handle_monitor)
    router.add_get("/access-log-stats", handle_access_stats)
    router.add_get("/llmhealth-series", handle_series)
    router.add_get("/v1/models", handle_models)
    router.add_get("/favicon.ico", handle_favicon)
    router.add_get("/livez", handle_livez)
    router.add_get("/readyz", handle_readyz)
    router.add_get("/metrics", handle_metrics)
    router.add_post("/admin/reload", handle_reload)
    for path in ROUTED_PATHS:
        router.add_post(path, handle_misdirected)
    router.add_route("*", "/{tail:.*}", handle_proxy)
    return app
