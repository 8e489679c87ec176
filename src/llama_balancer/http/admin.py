"""The balancer's own endpoints: local health, state snapshot, stats, dashboard, models."""
from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from ..core.models import public_models
from ..state.clock import iso_utc
from .context import AppContext, context_of


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def local_report(ctx: AppContext) -> dict[str, Any]:
    report = ctx.gpu.window.report(asyncio.get_running_loop().time())
    report["sampler"] = ctx.gpu.sampler.name
    return report


async def handle_llmhealth(request: web.Request) -> web.Response:
    return json_response(local_report(context_of(request)))


async def handle_snapshot(request: web.Request) -> web.Response:
    ctx = context_of(request)
    config = ctx.config
    sticky = ctx.sticky.entries()
    queue = ctx.queue.snapshot()
    backends = ctx.registry.snapshot()
    for backend in backends:
        backend["queue"] = queue["waiting_by_server"].get(backend["name"], 0)
    return json_response({
        "local": local_report(ctx),
        "backends": backends,
        "servers": {
            name: {"health_base": s.health_base, "model_base": s.model_base,
                   **({"request_max": s.request_max} if s.request_max is not None else {})}
            for name, s in config.servers.items()
        },
        "models": config.models,
        "fallback_server": config.fallback,
        "sticky_count": len(sticky),
        "sticky": sticky,
        "inflight_total": ctx.registry.total_inflight(),
        "routing": {"policy": config.balancer.routing.policy},
        "queue": queue,
        "affinity": ctx.affinity.snapshot(),
        "shared_state": ctx.shared.snapshot() if ctx.shared is not None else {"enabled": False, "mode": "off"},
        "decisions": ctx.stats.decisions(),
        "config": ctx.info,
        "now": iso_utc(ctx.clock.wall()),
    })


async def handle_access_stats(request: web.Request) -> web.Response:
    """The last hour of routed requests (the old tool's keys and ours, ``prompt_cache``
    among them) and the errors panel's recent counts."""
    ctx = context_of(request)
    return json_response({**ctx.stats.summary(), "errors": ctx.events.summary(ctx.clock.monotonic())})


async def handle_series(request: web.Request) -> web.Response:
    """The dashboard's short window per backend (``state.series``), with wall times."""
    ctx = context_of(request)
    now, wall = time.monotonic(), ctx.clock.wall()
    data = ctx.series.snapshot(now)
    sample_s = data["sample_s"]
    end_wall = wall - (now - data.pop("end_index") * sample_s)  # start of the newest bucket
    data["end"] = iso_utc(end_wall)
    data["start"] = iso_utc(end_wall - (data["points"] - 1) * sample_s)
    data["now"] = iso_utc(wall)
    return json_response(data)


async def handle_models(request: web.Request) -> web.Response:
    """Union of every backend's /v1/models minus instance variants, fetched live
    (a server that does not answer contributes its last known list)."""
    ctx = context_of(request)
    names = ctx.registry.names()
    answers = await asyncio.gather(*(ctx.pollers.poll_models(name) for name in names))
    entries: dict[str, dict[str, Any]] = {}
    for name, answer in zip(names, answers):
        if answer is None:
            served = ctx.registry.state(name).served or ()
            answer = [{"id": model_id, "object": "model", "owned_by": name} for model_id in served]
        for entry in answer:
            entries.setdefault(entry["id"], entry)  # the first backend's metadata wins
    data = [_model_entry(entries[key]) for key in public_models(list(entries))]
    return json_response({"object": "list", "data": data})


def _model_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {"id": entry["id"], "object": "model", "created": entry.get("created", 0),
            "owned_by": entry.get("owned_by", "llama-balancer")}


async def handle_livez(request: web.Request) -> web.Response:
    """The process answers (its event loop runs): nothing about the backends."""
    return json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    """Ready (200) while at least one backend is usable: polled at least once and neither
    invalid nor behind an open circuit; else 503. Counts only, never names or addresses."""
    ctx = context_of(request)
    registry, now = ctx.registry, ctx.clock.monotonic()
    names = registry.names()
    usable = sum(1 for name in names if _usable(registry.state(name), now))
    return json_response({"status": "ready" if usable else "not ready", "backends_usable": usable,
                          "backends": len(names)}, 200 if usable else 503)


def _usable(state: Any, now: float) -> bool:
    return bool(state.samples) and state.health(now) != "invalid"


async def handle_favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def handle_monitor(request: web.Request) -> web.Response:
    page = resources.files("llama_balancer.http").joinpath("assets/monitor.html").read_bytes()
    return web.Response(body=page, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def handle_metrics(request: web.Request) -> web.Response:
    body = context_of(request).metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def handle_reload(request: web.Request) -> web.Response:
    ctx = context_of(request)
    if ctx.reload is None:
        return json_response({"ok": False, "error": "this balancer was started without a config file"}, 409)
    result = await ctx.reload()
    return json_response(result, 200 if result["ok"] else 422)
