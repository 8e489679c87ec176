"""The listening front: every client connection starts here, as a ``FrontConnection``
(``http.front_connection``), the one asyncio adapter that runs the exchange state machine
(``h1.exchange``) for it.

Every request is read by llhttp in strict mode (``h1.requests``), whatever its framing:
Content-Length or chunked, ``Expect: 100-continue``, HTTP/1.0, pipelined. A request that is
not a model endpoint's (``is_native``) hands the connection, with its bytes as sent, to
aiohttp's ``RequestHandler`` for good (``handoff.HandedOff``), where the app serves the
dashboard, admin endpoints and the catch-all proxy. docs/fast-path.md says which code serves
what, docs/performance.md why.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable
from urllib.parse import urlsplit

from ..core.config import Config, ServerConfig
from ..h1.contract import Limits
from ..io.wire_pool import WirePool
from .context import AppContext
from .front_connection import FrontConnection


class Front:
    """Owns the listening socket, the client connections and the upstream pool."""

    def __init__(self, ctx: AppContext, hand_off: Callable[[], asyncio.Protocol], pool: WirePool) -> None:
        self.ctx = ctx
        self.hand_off = hand_off  # aiohttp's RequestHandler factory (runner.server)
        self.pool = pool
        self.connections: set[FrontConnection] = set()
        self.closing = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._addresses: dict[str, tuple[str, int, bool, str]] = {}
        self._limits: tuple[Config, Limits] | None = None

    async def listen(self, host: str, port: int, backlog: int = 4096) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: FrontConnection(self), host, port, backlog=backlog,
                                                reuse_address=True)
        self._sweeper = loop.create_task(self._fire_timers())
        return self._server.sockets[0].getsockname()[1]

    async def _fire_timers(self) -> None:
        """The machines' timers, fired by one sweep over the connections (a quarter of the
        shortest timeout apart, within 5 ms and 1 s): no timer handle per request."""
        while True:
            options = self.ctx.config.balancer
            shortest = min(options.client_idle_timeout_s, options.client_header_timeout_s,
                           options.upstream_idle_timeout_s or 4.0)
            await asyncio.sleep(min(max(shortest / 4, 0.005), 1.0))
            now = time.monotonic()
            for conn in [c for c in self.connections if c.deadlines]:
                deadlines = conn.deadlines
                for timer, at in list(deadlines.items()):
                    if at <= now and deadlines.get(timer) == at:
                        del deadlines[timer]
                        conn.fire(timer, now)

    def limits(self) -> Limits:
        """The machine's limits from the current config (rebuilt once per reload)."""
        config = self.ctx.config
        cached = self._limits
        if cached is None or cached[0] is not config:
            options = config.balancer
            cached = self._limits = (config, Limits(options.max_body_bytes, options.client_header_timeout_s,
                                                    options.client_idle_timeout_s, options.max_header_bytes,
                                                    options.max_headers))
        return cached[1]

    def take_back(self, transport: asyncio.Transport, data: bytes) -> None:
        """A connection aiohttp served comes back with a model endpoint's request."""
        conn = FrontConnection(self)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        conn.data_received(data)

    def stop_listening(self) -> None:
        """No new connections; idle ones close, busy ones close after their answer."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.machine.stop_keep_alive()

    async def drain(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for requests in flight, then cut what is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while any(conn.task is not None for conn in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        self.pool.close()

    def address_of(self, server: ServerConfig) -> tuple[str, int, bool, str]:
        """(host, port, tls, Host header) of a server's model API, parsed once per base URL."""
        base = server.model_base
        known = self._addresses.get(base)
        if known is None:
            parts = urlsplit(base)
            tls = parts.scheme == "https"
            host = parts.hostname or ""
            port = parts.port or (443 if tls else 80)
            shown = f"[{host}]" if ":" in host else host
            known = self._addresses[base] = (host, port, tls, f"{shown}:{port}")
        return known
