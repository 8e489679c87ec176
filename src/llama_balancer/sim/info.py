"""Handlers of the read-only endpoints: health, props, models, slots, metrics, llmhealth,
and /apply-template (a chat rendered in the sim's template, as the prompt its server sees)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .completions import STATE_KEY, json_response
from .metrics import render_metrics
from .params import slot_params
from .parse import SimHTTPError, decode_body
from .tokens import render_message

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"


async def handle_health(request: web.Request) -> web.Response:
    """Liveness only: stays ok while every slot is busy, like llama-server."""
    return json_response({"status": "ok"})


def _template_caps() -> dict[str, bool]:
    caps = ("object_arguments", "parallel_tool_calls", "preserve_reasoning", "reasoning_effort",
            "string_content", "system_role", "tool_calls", "tools", "typed_content")
    return {f"supports_{cap}": cap in ("string_content", "system_role") for cap in caps}


async def handle_props(request: web.Request) -> web.Response:
    """Server properties in a real llama-server's shape; ``total_slots`` counts every instance."""
    state = request.app[STATE_KEY]
    cfg = state.config
    return json_response({
        "default_generation_settings": {"params": slot_params(), "n_ctx": cfg.ctx_per_slot},
        "total_slots": cfg.slots * len(state.instances),
        "model_alias": state.instances[0],
        "model_ftype": "F16",
        "model_path": f"/models/{state.instances[0]}.gguf",
        "modalities": {"vision": False, "video": False, "audio": False},
        "media_marker": "<__media_sim__>",
        "endpoint_slots": True,
        "endpoint_props": False,
        "endpoint_metrics": True,
        "ui": True,
        "ui_settings": {},
        "chat_template": CHAT_TEMPLATE,
        "chat_template_caps": _template_caps(),
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "build_info": "sim",
        "is_sleeping": False,
        "cors_proxy_enabled": False,
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
    ctx = state.config.ctx_per_slot
    meta = {"vocab_type": 1, "n_vocab": 32000, "n_ctx": ctx, "n_ctx_train": ctx, "n_embd": 128,
            "n_params": 4424576, "size": 8850432, "ftype": "F16"}
    data = [{"id": name, "aliases": [name], "tags": [], "object": "model", "created": state.created,
             "owned_by": "llamacpp", "meta": meta}
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
    return web.Response(body=text.encode(), headers={
        "Content-Type": "text/plain; version=0.0.4",  # no charset, as llama-server sends it
        "Process-Start-Time-Unix": str(state.created),
    })


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


async def handle_apply_template(request: web.Request) -> web.Response:
    """``{"prompt": ...}``: the messages as the sim renders them (``<|role|>content\\n`` each; no
    generation prompt, as :mod:`.tokens` says), llama-server's answer shape. Bad input gets
    its errors: bad JSON a 500, no ``messages`` list a 400."""
    try:
        body = decode_body(await request.read())
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise SimHTTPError(400, "'messages' is required and must be a list of objects", "invalid_request_error")
    except SimHTTPError as err:
        return json_response(err.body(), status=err.status)
    return json_response({"prompt": "".join(render_message(m) for m in messages)})
