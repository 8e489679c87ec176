"""One pooled connection to a backend (``wire_pool.WirePool``), at the protocol level.

Thin on purpose: the bytes a backend sends go straight to whoever carries an exchange on
the connection (its ``sink``: the exchange machine, ``h1.exchange``), which reads the answer
with llhttp and writes its body to the client as it arrives (no re-chunking, no copy, no
task switch). Bytes on an idle connection mean nobody can frame the next answer: it closes.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .wire_pool import WirePool


class UpstreamSink(Protocol):
    def upstream_data(self, data: bytes, now: float) -> None: ...
    def upstream_closed(self, reason: str = "") -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to a backend; carries one exchange at a time, then goes back to the pool."""

    def __init__(self, pool: "WirePool", key: tuple[str, int, bool]) -> None:
        self._pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.sink: UpstreamSink | None = None  # the exchange it carries now
        self.closed = False
        self.forgotten = False  # the pool has counted its close
        self.reused = 0  # exchanges carried before the current one
        self.idle_since = 0.0
        # How long it may idle in the pool: a second less than the backend keeps it (its
        # Keep-Alive timeout; llama-server's is 5 s), so we never write into its close.
        self.keepalive_s = float("inf")
        self._paused = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.upstream_data(data, time.monotonic())
        elif self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream_closed(str(exc) if exc else "")

    # -- for the exchange that borrows it

    def attach(self, sink: UpstreamSink) -> None:
        self.sink = sink

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            sink, self.sink = self.sink, None
            if sink is not None:
                sink.upstream_closed("it was closed before the request could be sent")
            return
        transport.write(data)

    def release(self, reuse: bool, keepalive_s: float | None) -> None:
        """The exchange is over: back to the pool, or closed (a backend notices a gone client)."""
        self.sink = None
        if not reuse or self.closed:
            self.abort()
            return
        if keepalive_s is not None:
            self.keepalive_s = max(keepalive_s - 1.0, 0.0)
        self.resume_reading()  # a slow client's push-back must not follow the connection
        self.reused += 1
        self._pool.put_back(self)

    def pause_reading(self) -> None:
        """The client reads slower than the backend writes: stop reading (TCP pushes back)."""
        if self.transport is not None and not self.closed and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self._paused:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.sink = None
        if self.transport is not None:
            self.transport.abort()
