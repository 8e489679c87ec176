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

A model endpoint's request that arrives on such a connection goes back to the front, which
alone serves those (one data path): when a new read begins with a request line the front
serves (``wants``) and aiohttp has answered every request it read (else the read is held
until ``request_done`` says so), aiohttp's handler is let go and the connection, with that
read, returns to the front (``take_back``). A llhttp reader
follows the connection's requests to know where each begins. One pipelined in a read
behind another request stays with aiohttp, which answers it 421 (send it again, on another
connection) and closes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from secrets import token_hex
from typing import Any, Callable

from ..core.errors import BalancerError, RequestTimeout
from ..h1.answers import error_bytes
from ..h1.requests import END, MalformedRequest, RequestReader

LINE_BYTES = 8192  # a request line longer than this is never one the front takes back

log = logging.getLogger("llama_balancer.front")


class HandedOff(asyncio.Protocol):
    """aiohttp's handler for one connection, plus the request-head deadline."""

    def __init__(self, handler: asyncio.Protocol, header_timeout: Callable[[], float],
                 head_since: float | None = None,
                 take_back: Callable[[asyncio.Transport, bytes], None] | None = None,
                 wants: Callable[[bytes], bool] | None = None) -> None:
        self.handler = handler
        self._take_back, self._wants = take_back, wants
        self._requests: RequestReader | None = RequestReader(LINE_BYTES, 1 << 16) if take_back else None
        self._seen = self._answered = 0  # requests read in full; answers aiohttp finished
        self._held = b""  # a read whose request line is not complete yet, or a model request
        # waiting for aiohttp's last answer to end
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
            if self._requests is not None:
                data = self._follow(data)
                if not data:
                    return
            self.handler.data_received(data)
        except Exception as exc:  # nothing may escape a protocol callback
            log.error("unexpected %s serving a client connection: %s", type(exc).__name__, exc)
            self._answer_and_close(BalancerError("internal error in llama-balancer"))

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._requests is not None:
            self._requests.release()  # it and its llhttp parser refer to each other
            self._requests = None
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    # -- the front's requests go back to it

    def _follow(self, data: bytes) -> bytes:
        """What of ``data`` aiohttp gets: nothing when the connection goes back to the front."""
        requests = self._requests
        assert requests is not None and self._wants is not None
        if requests.idle and not self.closing:  # this read begins a request
            data = self._held + data
            line_end = data.find(b"\n", 0, LINE_BYTES)
            if line_end < 0 and len(data) < LINE_BYTES:
                self._held = data  # the next read tells
                return b""
            self._held = b""
            if line_end >= 0 and self._wants(data[:line_end]):
                if self._seen == self._answered and not self.busy:
                    self._give_back(data)
                else:  # aiohttp is still finishing its answer (its task's end is not in yet)
                    self._held = data  # request_done gives it back
                return b""
        try:
            requests.feed(data)
        except MalformedRequest:
            requests.release()
            self._requests = None  # aiohttp answers it and closes; nothing more to follow
            return data
        self._seen += sum(1 for event in requests.events if event is END)
        requests.events.clear()
        return data

    def _give_back(self, data: bytes) -> None:
        transport, take_back = self.transport, self._take_back
        assert transport is not None and take_back is not None
        self._disarm()
        if self._requests is not None:
            self._requests.release()
        self._requests = None
        handler: Any = self.handler
        handler.transport = None  # aiohttp closes its transport when let go: not ours to close
        handler.connection_lost(None)
        take_back(transport, data)

    # -- told by the middleware

    def request_started(self) -> None:
        self.busy = True
        self._disarm()  # the head arrived

    def request_done(self, keep_alive: bool) -> None:
        self.busy = False  # the next byte starts the next head's clock
        self._answered += 1
        self.closing = self.closing or not keep_alive
        held = self._held
        if held and self._requests is not None and self._seen == self._answered:
            line_end = held.find(b"\n", 0, LINE_BYTES)
            if line_end >= 0 and self._wants is not None and self._wants(held[:line_end]):
                self._held = b""
                if self.closing:  # aiohttp's answer closes the connection: nothing more is served
                    return
                self._give_back(held)

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
