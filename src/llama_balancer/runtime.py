"""Builds everything from a Config, owns every task, serves, and shuts down cleanly."""
from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

from .core.config import Config, parse_config
from .core.health import GpuWindow
from .http.app import build_app
from .http.context import AppContext
from .io.gpu import GpuMonitor, GpuSampler, detect_sampler
from .io.pollers import Pollers
from .io.upstream import UpstreamClient
from .state.access_stats import AccessStats
from .state.clock import Clock, SystemClock, iso_utc
from .state.registry import Registry
from .state.sticky import StickyStore

log = logging.getLogger("llama_balancer")


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError (path-named) or OSError."""
    return parse_config(Path(path).read_bytes())


class Runtime:
    """One balancer process: the app context, its background tasks and the listening site."""

    def __init__(self, config: Config, *, config_path: str | None = None, clock: Clock | None = None,
                 gpu_sampler: GpuSampler | None = None) -> None:
        clock = clock or SystemClock()
        options = config.balancer
        registry = Registry(config, clock)
        client = UpstreamClient(options)
        self.context = AppContext(
            config=config,
            clock=clock,
            registry=registry,
            sticky=StickyStore(options.sticky_ttl_s, clock),
            stats=AccessStats(options.access_log_window_s, clock),
            client=client,
            pollers=Pollers(registry, client),
            gpu=GpuMonitor(gpu_sampler or detect_sampler(),
                           GpuWindow(options.gpu_window_s, options.gpu_busy_threshold),
                           options.gpu_sample_interval_s),
            info={"path": config_path, "loaded_at": iso_utc(clock.wall())},
        )
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str = "0.0.0.0", port: int = 18000) -> int:
        """Start the client, polls and GPU sampler, then listen; returns the bound port."""
        ctx = self.context
        await ctx.client.start()
        ctx.pollers.apply(ctx.config)
        ctx.gpu.start()
        # handler_cancellation: a client that goes away cancels its handler, which closes
        # the upstream request and gives back the in-flight slot.
        self._runner = web.AppRunner(build_app(ctx), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=4096, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        ctx = self.context
        ctx.pollers.stop()
        await ctx.gpu.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await ctx.client.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def serve_until_signal(runtime: Runtime, host: str, port: int, banner: list[str] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows
            pass
    bound = await runtime.start(host, port)
    log.info("llama-balancer listening on http://%s:%d", host, bound)
    for line in banner or []:
        print(line, flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runtime.stop()


def run(coro: Any) -> None:
    """Run a coroutine on uvloop when importable."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
