"""Handlers of the read-only endpoints: health, props, models, slots, metrics, llmhealth."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .completions import STATE_KEY, json_response
from .metrics import render_metrics
from .parse import SimHTTPError
from .state import SimState

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"


async def handle_health(request: web.Request) -> web.Response:
    """Liveness only: stays ok while every slot is busy, like llama-server."""
    return json_response({"status": "ok"})


def _generation_settings(state: SimState) -> dict[str, Any]:
    cfg = state.config
    return {
        "id": 0,
        "id_task": -1,
        "n_ctx": cfg.ctx_per_slot,
        "speculative": False,
        "is_processing": False,
        "params": {"n_predict": -1, "stream": True, "temperature": 0.8},
    }


async def handle_props(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    cfg = state.config
    return json_response({
        "default_generation_settings": _generation_settings(state),
        "total_slots": cfg.slots * len(state.instances),
        "model_path": f"/models/{state.instances[0]}.gguf",
        "modalities": {"vision": False, "audio": False},
        "chat_template": CHAT_TEMPLATE,
        "build_info": "sim",
    })


def _ollama_entry(name: str) -> dict[str, Any]:
    return {
        "name": name, "model": name, "modified_at": "", "size": "", "digest": "",
        "type": "model", "description": "", "tags": [""], "capabilities": ["completion"],
        "parameters": "",
        "details": {"parent_model": "", "format": "gguf", "family": "", "families": [""],
                    "parameter_size": "", "quantization_level": ""},
    }


async def handle_models(request: web.Request) -> web.Response:
    """Every instance of every model, in both the Ollama and the OpenAI lists."""
    state = request.app[STATE_KEY]
    data = [{"id": name, "object": "model", "created": state.created,
             "owned_by": "llamacpp", "aliases": [name],
             "meta": {"n_ctx_train": state.config.ctx_per_slot}}
            for name in state.instances]
    return json_response({"models": [_ollama_entry(n) for n in state.instances],
                          "object": "list", "data": data})


async def handle_slots(request: web.Request) -> web.Response:
    """Per-slot state; with ?fail_on_no_slot=1 a 503 when none is idle."""
    state = request.app[STATE_KEY]
    slots = state.all_slots()
    if request.query.get("fail_on_no_slot") in ("1", "true") and all(s.busy for s in slots):
        err = SimHTTPError(503, "no slot available", "unavailable_error")
        return json_response(err.body(), status=503)
    return json_response([slot.to_json() for slot in slots])


async def handle_metrics(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    text = render_metrics(state.stats, state.pools.values())
    return web.Response(body=text.encode(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def handle_llmhealth(request: web.Request) -> web.Response:
    """The GPU-busy sidecar's answer: busy while any slot works, unless forced."""
    state = request.app[STATE_KEY]
    mode = state.config.llmhealth
    if mode == "absent":  # what a real llama-server answers for a path it does not serve
        return json_response({"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}},
                             status=404)
    if mode == "garbage":
        return web.Response(text="weird", content_type="text/plain")
    if mode == "error":
        err = SimHTTPError(500, "llmhealth probe failed", "server_error")
        return json_response(err.body(), status=500)
    busy = mode == "busy" if mode is not None else state.any_busy()
    return json_response({"status": "busy" if busy else "idle",
                          "gpu_util_max5s": 100.0 if busy else 0.0,
                          "window_seconds": 5})
