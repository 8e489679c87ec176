"""Polling a backend's own signals, without an agent: llama-server's /health, /slots,
/metrics and /props; vLLM's /health and /metrics; a plain OpenAI server's /v1/models.

Each poll yields a health sample for the window (error -> invalid; work in progress ->
busy; else idle) and, where the server reports it, a load view for placement.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from ..core.config import ServerConfig
from ..core.errors import UpstreamError
from ..core.health import HealthSample
from ..core.signals import (BackendLoad, SlotsInfo, guess_kind, llamacpp_load, parse_llamacpp_health,
                            parse_llamacpp_metrics, parse_llamacpp_slots,
                            parse_vllm_metrics, vllm_load)
from .upstream import UpstreamClient


@dataclass(frozen=True)
class NativePoll:
    kind: str
    sample: HealthSample
    load: BackendLoad | None = None
    slots: SlotsInfo | None = None


async def poll_native(client: UpstreamClient, name: str, server: ServerConfig, kind: str,
                      timeout: aiohttp.ClientTimeout) -> NativePoll:
    """One poll of ``server`` as ``kind`` ("auto" is resolved here and returned)."""
    base = server.model_base
    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else None
    errors: dict[str, str] = {}  # why a path could not be read: the detail of an invalid sample

    async def get(path: str) -> tuple[int, str, bytes] | None:
        try:
            status, answer_headers, body = await client.fetch_full(base + path, timeout, name, headers)
        except UpstreamError as exc:
            errors[path] = exc.message
            return None
        return status, answer_headers.get("Server", ""), body

    polled = await _poll(get, kind)
    detail = polled.sample.detail  # "<path> unreachable" (see _why): say why
    path = detail.removesuffix(" unreachable") if detail else None
    if path in errors:
        polled = NativePoll(polled.kind, HealthSample("invalid", detail=f"{detail}: {errors[path]}"),
                            polled.load, polled.slots)
    return polled


async def _poll(get, kind: str) -> NativePoll:
    try:
        if kind == "openai":
            return _openai(await get("/v1/models"))
        health, metrics, extra = await asyncio.gather(
            get("/health"), get("/metrics"), get("/slots" if kind != "vllm" else "/health"))
        if kind == "auto":
            if health is None and metrics is None and extra is None:  # nothing answers: kind unknown
                return NativePoll("auto", HealthSample("invalid", detail=_why(None, "/health")))
            props = await get("/props")
            kind = _resolve(health, props, metrics)
            if kind == "openai":
                return _openai(await get("/v1/models"))
        if kind == "vllm":
            return _vllm(health, metrics)
        return _llamacpp(health, metrics, extra)
    except UpstreamError as exc:  # pragma: no cover - get() already maps these
        return NativePoll(kind, HealthSample("invalid", detail=str(exc)))


def _resolve(health, props, metrics) -> str:
    return guess_kind(health[1] if health else None, props[2] if props and props[0] == 200 else None,
                      metrics[2] if metrics and metrics[0] == 200 else None)


def _openai(models: tuple[int, str, bytes] | None) -> NativePoll:
    """Alive when ``/v1/models`` answers 200, or 401/403: a server that guards its API with
    keys of its own (the clients' keys pass through) is up all the same."""
    if models is None or models[0] not in (200, 401, 403):
        return NativePoll("openai", HealthSample("invalid", detail=_why(models, "/v1/models")))
    return NativePoll("openai", HealthSample("idle"))


def _llamacpp(health, metrics, slots_answer) -> NativePoll:
    if health is None or not parse_llamacpp_health(health[0], health[2]):
        return NativePoll("llama.cpp", HealthSample("invalid", detail=_why(health, "/health")))
    parsed_metrics = parse_llamacpp_metrics(metrics[2]) if metrics and metrics[0] == 200 else None
    slots = parse_llamacpp_slots(slots_answer[2]) if slots_answer and slots_answer[0] == 200 else None
    load = llamacpp_load(parsed_metrics, slots)
    working = load is not None and (load.running + load.waiting) > 0
    return NativePoll("llama.cpp", HealthSample("busy" if working else "idle"), load, slots)


def _vllm(health, metrics) -> NativePoll:
    if health is None or health[0] != 200:
        return NativePoll("vllm", HealthSample("invalid", detail=_why(health, "/health")))
    load = vllm_load(parse_vllm_metrics(metrics[2])) if metrics and metrics[0] == 200 else None
    working = load is not None and (load.running + load.waiting) > 0
    return NativePoll("vllm", HealthSample("busy" if working else "idle"), load)


def _why(answer: tuple[int, str, bytes] | None, path: str) -> str:
    return f"{path} unreachable" if answer is None else f"{path} answered HTTP {answer[0]}"
