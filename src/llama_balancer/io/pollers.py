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
from ..core.health import HealthSample, combine, is_agent_answer, parse_agent_probe, parse_llmhealth
from ..core.profile import agent_hint
from ..state.backend import BackendState
from ..state.registry import Registry
from .backend_watch import BackendWatch
from .native_signals import poll_native
from .upstream import UpstreamClient

log = logging.getLogger("llama_balancer.pollers")

AGENT_PROBE_EVERY = 10  # polls between two probes for an agent while none has answered


class Pollers:
    """Owns the poll tasks; ``apply(config)`` restarts them for a new config."""

    def __init__(self, registry: Registry, client: UpstreamClient, watch: BackendWatch | None = None) -> None:
        self._registry = registry
        self._client = client
        self.watch = watch  # told after every health poll (backend state changes are logged)
        self._tasks: list[asyncio.Task[None]] = []

    def apply_timeouts(self, config: Config) -> None:
        options = config.balancer
        self._health_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=options.health_connect_timeout_s, sock_read=options.health_read_timeout_s
        )

    def apply(self, config: Config) -> None:
        self.stop()
        options = config.balancer
        self.apply_timeouts(config)
        if self.watch is not None:
            self.watch.forget(set(config.servers))
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
        configured = state.server.kind
        warning = None
        if configured == "agent":
            sample = await self._poll_agent(state.server.health_base, name)
            self._registry.record_health(name, sample, state.server.health_base + "/llmhealth")
            warning = self._warn_about_agent(state, sample)
        elif configured == "auto":
            await self._poll_detected(name)
        else:
            await self._poll_native(name, configured)
        self._announce(state)
        if self.watch is not None and self._registry.find(name) is state:
            self.watch.observe(state, warning=warning)  # one line for the agent's silence and the state change
        elif warning is not None:
            log.warning("%s", warning)

    async def _poll_agent(self, health_base: str, name: str) -> HealthSample:
        try:
            status, body = await self._client.fetch(health_base + "/llmhealth", self._health_timeout, server=name)
            return parse_llmhealth(status, body)
        except UpstreamError as exc:
            return HealthSample("invalid", detail=str(exc))

    async def _poll_native(self, name: str, kind: str) -> None:
        state = self._registry.state(name)
        mark = self._registry.poll_mark(name)
        polled = await poll_native(self._client, name, state.server, kind, self._health_timeout)
        self._registry.record_signals(name, polled.load, polled.slots, polled.kind, mark)
        self._registry.record_health(name, polled.sample, state.server.model_base)

    async def _poll_detected(self, name: str) -> None:
        """No ``kind`` configured: the model server's own signals (its kind detected again
        after any failed poll), and an ``/llmhealth`` agent's where one answers."""
        state = self._registry.state(name)
        server, found = state.server, state.discovery
        kind = state.kind if state.kind != "auto" and state.status != "invalid" else "auto"
        probe_agent = found.agent_seen or found.agent_failing or found.polls % AGENT_PROBE_EVERY == 0
        found.polls += 1
        mark = self._registry.poll_mark(name)
        polled, agent = await asyncio.gather(
            poll_native(self._client, name, server, kind, self._health_timeout),
            self._probe_agent(server.health_base, name, found.agent_seen) if probe_agent else _nothing())
        if probe_agent:
            self._note_agent(state, agent)
        sample = polled.sample if agent is None else combine(polled.sample, agent)
        self._registry.record_signals(name, polled.load, polled.slots, polled.kind, mark)
        url = server.health_base + "/llmhealth" if found.agent_seen else server.model_base
        self._registry.record_health(name, sample, url)

    async def _probe_agent(self, health_base: str, name: str, known: bool) -> HealthSample | None:
        """The agent's sample; None when no agent answers there. Once one has answered, its
        answers are read as the old tool read them (an error is invalid, garbage busy)."""
        if known:
            return await self._poll_agent(health_base, name)
        try:
            status, body = await self._client.fetch(health_base + "/llmhealth", self._health_timeout, server=name)
        except UpstreamError:
            return None
        return parse_agent_probe(status, body)

    def _note_agent(self, state: BackendState, agent: HealthSample | None) -> None:
        found, server = state.discovery, state.server
        found.agent_failing = agent is not None and not is_agent_answer(agent)  # probed every poll while it fails
        if is_agent_answer(agent):
            found.agent_seen = True
            return
        if agent is None and not found.agent_seen and not found.warned and server.health_port != server.model_port:
            found.warned = True
            log.warning("%s: no /llmhealth agent answers at %s; using the model server's own signals "
                        "(start `llama-balancer serve` there for its GPU load, or set health-port to the "
                        "model-port to say there is none)", state.name, server.health_base)

    def _warn_about_agent(self, state: BackendState, sample: HealthSample) -> str | None:
        """A configured agent that fails gets one warning a failure streak, with the hint
        (returned: the backend watch writes it, with the state change it causes)."""
        found, server = state.discovery, state.server
        if sample.status != "invalid":
            if found.warned:
                log.info("%s: the /llmhealth agent at %s answers again", state.name, server.health_base)
            found.warned, found.agent_seen = False, True
            return None
        if found.warned:
            return None
        found.warned = True
        return (f"{state.name}: the /llmhealth agent at {server.health_base} does not answer: "
                + agent_hint(state.name, sample.detail, server.health_port == server.model_port))

    def _announce(self, state: BackendState) -> None:
        """One log line per server once its kind is known, and again on every change."""
        if state.kind == "auto" or not (state.discovery.models_polled or state.served is not None):
            return
        if state.status == "invalid":  # what a failing poll cannot read (slots) is no change of kind
            return
        profile = state.profile()
        if profile != state.discovery.announced:
            state.discovery.announced = profile
            log.info("%s", profile.describe(state.name, state.server.model_base, state.server.health_base))

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
        state = self._registry.find(name)
        if state is not None:
            state.discovery.models_polled = True
            self._announce(state)
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


async def _nothing() -> None:
    return None


async def _every(interval: float, poll: Callable[[], Awaitable[Any]]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await poll()
        except Exception:  # a poll must never end the loop
            log.exception("poll failed")
        await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
