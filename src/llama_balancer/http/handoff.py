"""A client connection the front handed to aiohttp, with the head deadline aiohttp lacks.

aiohttp's ``RequestHandler`` parses and serves the connection; this protocol sits between
it and the transport and passes every call through. What it adds: a request head must
arrive within ``client_header_timeout_s`` of its first byte, else the connection gets 408
and closes. aiohttp's own keep-alive timer only covers a connection that sends nothing, and
the idle clock of a byte-per-second client never runs out (slowloris).

A head is in progress when bytes arrive while no request is being handled; the app's
middleware says when handling starts (``request_started``), and the end of the task that
handles the request and writes its answer says when it ends (``request_done``). After an
answer that closes the connection nothing more is timed or written: aiohttp reads what is
left of the body for a while (its lingering close) and closes.
Bodies are timed where they are read (``body.body_chunks``): only the time spent waiting
for the client counts there, not a slow backend holding the upload back.
"""
from __future__ import annotations

import asyncio
import logging
import time
from secrets import token_hex
from typing import Any, Callable

from ..core.errors import BalancerError, RequestTimeout
from .errors import error_bytes

log = logging.getLogger("llama_balancer.front")


class HandedOff(asyncio.Protocol):
    """aiohttp's handler for one connection, plus the request-head deadline."""

    def __init__(self, handler: asyncio.Protocol, header_timeout: Callable[[], float],
                 head_since: float | None = None) -> None:
        self.handler = handler
        self.header_timeout = header_timeout  # read when a head starts: a reload applies at once
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request is being handled, or its answer written
        self.closing = False  # the last answer closes the connection
        self._head_since = head_since  # the first byte of a head the front began to read
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol, passed through

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        try:
            if self._timer is None and not self.busy and not self.closing and data:
                self._arm()
            self.handler.data_received(data)
        except Exception as exc:  # nothing may escape a protocol callback
            log.error("unexpected %s serving a client connection: %s", type(exc).__name__, exc)
            self._answer_and_close(BalancerError("internal error in llama-balancer"))

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    # -- told by the middleware

    def request_started(self) -> None:
        self.busy = True
        self._disarm()  # the head arrived

    def request_done(self, keep_alive: bool) -> None:
        self.busy = False  # the next byte starts the next head's clock
        self.closing = self.closing or not keep_alive

    # -- the deadline

    def _arm(self) -> None:
        now = time.monotonic()  # the front's clock (uvloop's loop.time() is another)
        since = self._head_since if self._head_since is not None else now
        self._head_since = None
        delay = max(0.0, since + self.header_timeout() - now)
        self._timer = asyncio.get_running_loop().call_later(delay, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.busy or self.closing:
            return
        timeout = self.header_timeout()
        log.debug("closing a connection whose request head took over %s s", timeout)
        self._answer_and_close(RequestTimeout(f"the request head did not arrive within {timeout:g} s"))

    def _answer_and_close(self, exc: BalancerError) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.busy:  # no answer of aiohttp's can be under way
            transport.write(error_bytes(exc, token_hex(16), close=True))
        transport.close()


def handed_off(request: Any) -> HandedOff | None:
    """The HandedOff around the connection an aiohttp request came on, if any (a test app
    served by aiohttp alone has none)."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, HandedOff) else None
