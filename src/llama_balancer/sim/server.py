"""Starting and stopping a simulated llama-server on a real socket."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .app import build_app
from .config import SimConfig, check_fault
from .control import Listener
from .state import SimState

# Handlers still running at close are cancelled after this long (aiohttp waits 60 s).
SHUTDOWN_TIMEOUT_S = 0.25


class RunningSim:
    """A started sim: its address, live config, request log and fault switch."""

    def __init__(self, state: SimState, runner: web.AppRunner, listener: Listener) -> None:
        self._state = state
        self._runner = runner
        self._listener = listener
        self.host = listener.host
        self.port = listener.port
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"
        state.set_fault = self.set_fault

    @property
    def config(self) -> SimConfig:
        """The live config; the control endpoint mutates this object."""
        return self._state.config

    @property
    def events(self) -> list[dict[str, Any]]:
        """The live request log (see /sim/events)."""
        return self._state.events.items

    @property
    def state(self) -> SimState:
        return self._state

    async def set_fault(self, fault: str | None) -> None:
        """Set the fault; "refuse" closes the socket, anything else reopens the same port."""
        check_fault(fault)
        self._state.config.fault = fault
        if fault == "refuse":
            await self._listener.close()
        else:
            await self._listener.open()

    async def close(self) -> None:
        """Stop listening, cancel what still runs, free the port."""
        await self._listener.close()
        await self._runner.cleanup()

    async def __aenter__(self) -> RunningSim:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_sim(cfg: SimConfig, host: str = "127.0.0.1", port: int = 0) -> RunningSim:
    """Serve `cfg` on host:port (0: a free port) and return once it accepts connections.

    With cfg.fault == "refuse" the port is bound once (so it is known) and closed again.
    """
    state = SimState(cfg)
    keepalive = {"keepalive_timeout": cfg.keepalive_timeout_s} if cfg.keepalive_timeout_s > 0 else {}
    runner = web.AppRunner(build_app(state), handler_cancellation=True, access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S, **keepalive)
    await runner.setup()
    listener = Listener(runner, host, port)
    try:
        await listener.open()
    except BaseException:
        await runner.cleanup()
        raise
    sim = RunningSim(state, runner, listener)
    if cfg.fault == "refuse":
        await listener.close()
    return sim
