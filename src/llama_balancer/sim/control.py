"""Runtime control: the listening socket behind the "refuse" fault, and the /sim/* hooks.

/sim/control and /sim/events are test hooks, not llama-server API:
- POST /sim/control {"fault", "llmhealth", "stall_s", "chunk_delay_s", ...} (any subset)
  changes the live config and answers the current settings; GET answers them unchanged.
  "refuse" answers first, then closes the socket (only RunningSim.set_fault reopens it).
- GET /sim/events lists the request log; DELETE /sim/events clears it.
See passthrough.py for /sim/echo and /sim/stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
from aiohttp import web

from .completions import STATE_KEY, json_response
from .config import SimConfig, check_fault, check_llmhealth
from .parse import SimHTTPError
from .state import SimState


class Listener:
    """Owns the listening socket so "refuse" can close it and reopen the same port.

    Closing also drops every open connection, idle keep-alive ones included, so a
    refusing server looks like a dead process: in-flight requests are cut and new
    connects get ECONNREFUSED.
    """

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port
        self._site: web.TCPSite | None = None
        self._lock = asyncio.Lock()

    @property
    def listening(self) -> bool:
        return self._site is not None

    async def open(self) -> None:
        """Listen (again) on host:port; the first open fixes the port when it was 0."""
        async with self._lock:
            if self._site is not None:
                return
            site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
            await site.start()
            self.port = site.port
            self._site = site

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        async with self._lock:
            if self._site is None:
                return
            await self._site.stop()
            self._site = None
            server = self._runner.server
            for conn in server.connections if server is not None else []:
                conn.force_close()
        # Let peers in this process see the FIN before they reuse a pooled connection.
        await asyncio.sleep(0.01)


async def apply_fault(state: SimState, fault: str | None) -> None:
    """Set the fault through the running server (socket too), or only in the config."""
    check_fault(fault)
    if state.set_fault is not None:
        await state.set_fault(fault)
    else:
        state.config.fault = fault


def _number(key: str, value: Any, *, allow_none: bool = False, integer: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{key}: expected a non-negative number, got {value!r}")
    return int(value) if integer else float(value)


def _checked(key: str, value: Any) -> Any:
    """The validated value for one control key (ValueError names the key)."""
    if key == "fault":
        check_fault(value)
        return value
    if key == "llmhealth":
        check_llmhealth(value)
        return value
    if key == "fast":
        if not isinstance(value, bool):
            raise ValueError(f"fast: expected true or false, got {value!r}")
        return value
    if key in ("drop_after_chunks", "default_max_tokens"):
        return _number(key, value, integer=True)
    if key in ("stall_s", "gen_tps", "prompt_tps", "chunk_delay_s"):
        return _number(key, value, allow_none=key == "chunk_delay_s")
    raise ValueError(f"{key}: not a control setting (allowed: {', '.join(CONTROL_KEYS)})")


CONTROL_KEYS: tuple[str, ...] = (
    "fault", "llmhealth", "stall_s", "chunk_delay_s", "drop_after_chunks",
    "gen_tps", "prompt_tps", "fast", "default_max_tokens",
)


def settings(cfg: SimConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


async def handle_control_get(request: web.Request) -> web.Response:
    return json_response(settings(request.app[STATE_KEY].config))


async def handle_control_post(request: web.Request) -> web.StreamResponse:
    """Apply any subset of settings; all are checked before any is applied."""
    state = request.app[STATE_KEY]
    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict):
            raise ValueError("body: expected a JSON object")
        changes = {key: _checked(key, value) for key, value in body.items()}
    except (ValueError, orjson.JSONDecodeError) as exc:
        err = SimHTTPError(400, str(exc), "invalid_request_error")
        return json_response(err.body(), status=400)
    has_fault = "fault" in changes
    fault = changes.pop("fault", None)
    for key, value in changes.items():
        setattr(state.config, key, value)
    if not has_fault or fault != "refuse":
        if has_fault:
            await apply_fault(state, fault)
        return json_response(settings(state.config))
    reply = settings(state.config) | {"fault": "refuse"}
    resp = json_response(reply)
    await resp.prepare(request)
    await resp.write_eof()
    await asyncio.shield(apply_fault(state, "refuse"))
    return resp


async def handle_events_get(request: web.Request) -> web.Response:
    return json_response(request.app[STATE_KEY].events.items)


async def handle_events_delete(request: web.Request) -> web.Response:
    events = request.app[STATE_KEY].events
    cleared = len(events.items)
    events.clear()
    return json_response({"cleared": cleared})
