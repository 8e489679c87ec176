"""The pool of upstream connections (``wire.UpstreamConnection``): keep-alive per backend
address, bounded in all. (A pooled connection the backend had closed is replaced once by the
front's attempt with a new one from ``connect``, before it counts as a failure.)"""
from __future__ import annotations

import asyncio
import time
from collections import deque

from ..core.errors import UpstreamError, UpstreamTimeout
from .wire import UpstreamConnection

KEEPALIVE_S = 30.0  # an idle pooled connection older than this is closed, not reused


class WirePool:
    """Keep-alive connections per backend address, bounded in all by ``limit`` (0: unbounded)."""

    def __init__(self, connect_timeout_s: float, idle_timeout_s: float | None, limit: int = 0,
                 keepalive_s: float = KEEPALIVE_S) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.limit = limit
        self.keepalive_s = keepalive_s
        self._idle: dict[tuple[str, int, bool], list[UpstreamConnection]] = {}
        self._names: dict[tuple[str, int, bool], str] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def reconfigure(self, connect_timeout_s: float, idle_timeout_s: float | None, limit: int) -> None:
        """A reload: the timeouts apply from the next connect or exchange. A larger limit lets
        the requests waiting for a place connect now; a smaller one closes idle connections
        over it now, and busy ones as their exchange ends."""
        raised = limit == 0 or (self.limit != 0 and limit > self.limit)
        self.connect_timeout_s, self.idle_timeout_s, self.limit = connect_timeout_s, idle_timeout_s, limit
        if raised:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
        elif limit:
            for _ in range(min(self._open - limit, self.idle_connections)):
                self._close_one_idle()

    @property
    def open_connections(self) -> int:
        """Connections open or being opened, idle in the pool or carrying an exchange."""
        return self._open

    @property
    def idle_connections(self) -> int:
        """Connections waiting in the pool for their next exchange."""
        return sum(len(idle) for idle in self._idle.values())

    def server_of(self, key: tuple[str, int, bool]) -> str | None:
        return self._names.get(key)

    def pooled(self, host: str, port: int, tls: bool, server: str) -> UpstreamConnection | None:
        """An idle connection to the address, if one is kept (no await: the common case)."""
        key = (host, port, tls)
        self._names[key] = server
        return self._pooled(key)

    async def connect(self, host: str, port: int, tls: bool, server: str, where: str) -> UpstreamConnection:
        """A new connection to the address (waiting for a place under the limit)."""
        key = (host, port, tls)
        self._names[key] = server
        return await self._connect(key, where)

    def _pooled(self, key: tuple[str, int, bool]) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        now = 0.0
        while idle:
            conn = idle.pop()
            if not now:
                now = time.monotonic()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since > min(self.keepalive_s, conn.keepalive_s):
                conn.abort()
                continue
            return conn
        return None

    async def _connect(self, key: tuple[str, int, bool], where: str) -> UpstreamConnection:
        while self.limit and self._open >= self.limit:
            self._close_one_idle()  # its close frees a place: wait for that, as for any
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            pooled = self._pooled(key)
            if pooled is not None:
                return pooled
        loop = asyncio.get_running_loop()
        self._open += 1
        conn = UpstreamConnection(self, key)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.create_connection(lambda: conn, key[0], key[1], ssl=True if key[2] else None)
        except TimeoutError:
            self._connect_failed(conn)
            raise UpstreamTimeout(f"{where} timed out connecting", kind="timeout", server=self._names.get(key)) from None
        except OSError as exc:
            self._connect_failed(conn)
            raise UpstreamError(f"{where} is unreachable: {exc.strerror or exc}", kind="connect",
                                server=self._names.get(key)) from None
        except BaseException:  # cancelled: the client left while we connected
            self._connect_failed(conn)
            raise
        return conn

    def _connect_failed(self, conn: UpstreamConnection) -> None:
        """A connect that did not finish frees its place once: cancelled after the
        connection was made, asyncio closes it and its connection_lost forgets it too."""
        if conn.transport is not None and conn.transport.is_closing() is False:
            conn.transport.abort()
        self.forget(conn)

    def put_back(self, conn: UpstreamConnection) -> None:
        transport = conn.transport
        if conn.closed or conn.forgotten or transport is None or transport.is_closing():
            return  # closing already: its connection_lost accounts for it, once
        if self.limit and self._open > self.limit:  # a reload lowered the limit
            conn.abort()  # its connection_lost frees the place
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)
        self._wake_one()

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed: it leaves the pool and frees a place under the limit (once)."""
        if conn.forgotten:
            return
        conn.forgotten = True
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        self._released()

    def _released(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_one_idle(self) -> None:
        for idle in self._idle.values():
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    conn.abort()  # its connection_lost frees the place
                    return

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
