"""Background polls: each server's ``/llmhealth`` (health window) and ``/v1/models``
(instance discovery). One task per server and kind, so a slow server delays nobody else.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import aiohttp
import orjson

from ..core.config import Config
from ..core.errors import UpstreamError
from ..core.health import HealthSample, parse_llmhealth
from ..state.registry import Registry
from .native_signals import poll_native
from .upstream import UpstreamClient

log = logging.getLogger("llama_balancer.pollers")


class Pollers:
    """Owns the poll tasks; ``apply(config)`` restarts them for a new config."""

    def __init__(self, registry: Registry, client: UpstreamClient) -> None:
        self._registry = registry
        self._client = client
        self._tasks: list[asyncio.Task[None]] = []

    def apply(self, config: Config) -> None:
        self.stop()
        options = config.balancer
        self._health_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=options.health_connect_timeout_s, sock_read=options.health_read_timeout_s
        )
        for name in config.servers:
            self._tasks.append(asyncio.create_task(
                _every(options.health_poll_interval_s, lambda n=name: self.poll_health(n)), name=f"health:{name}"))
            self._tasks.append(asyncio.create_task(
                _every(options.models_cache_ttl_s, lambda n=name: self.poll_models(n)), name=f"models:{name}"))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def poll_health(self, name: str) -> None:
        state = self._registry.state(name)
        if state.kind != "agent":
            await self._poll_native(name)
            return
        url = state.server.health_base + "/llmhealth"
        try:
            status, body = await self._client.fetch(url, self._health_timeout, server=name)
            sample = parse_llmhealth(status, body)
        except UpstreamError as exc:
            sample = HealthSample("invalid", detail=str(exc))
        self._registry.record_health(name, sample, url)

    async def _poll_native(self, name: str) -> None:
        state = self._registry.state(name)
        polled = await poll_native(self._client, name, state.server, state.kind, self._health_timeout)
        self._registry.record_signals(name, polled.load, polled.slots, polled.kind)
        self._registry.record_health(name, polled.sample, state.server.model_base)

    async def poll_models(self, name: str) -> list[dict[str, Any]] | None:
        """Refresh one server's model list; returns its entries, or None when unreachable."""
        server = self._registry.state(name).server
        url = server.model_base + "/v1/models"
        headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else None
        try:
            status, body = await self._client.fetch(url, self._health_timeout, server=name, headers=headers)
            entries = _model_entries(body) if status == 200 else None
        except UpstreamError as exc:
            log.debug("model discovery on %s failed: %s", name, exc)
            entries = None
        if entries is not None:
            self._registry.record_models(name, [entry["id"] for entry in entries])
        return entries


def _model_entries(body: bytes) -> list[dict[str, Any]] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return [item for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]


async def _every(interval: float, poll: Callable[[], Awaitable[Any]]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await poll()
        except Exception:  # a poll must never end the loop
            log.exception("poll failed")
        await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
