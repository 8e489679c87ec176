"""The listening front: serves the routed model endpoints itself, hands the rest to aiohttp.

Each client connection starts with a ``FrontConnection`` (an asyncio protocol). A plain
``POST`` to a routed path (see ``request_head``) is served natively: the routing logic of
the routing layer's ``Router`` over upstream connections from ``io.wire`` that write the answer
straight to this connection's transport. Anything else hands the connection, with every
byte read so far, to aiohttp's ``RequestHandler`` for good, where the app's middleware and
handlers (admin, dashboard, catch-all proxy, and the routed endpoints too) serve it as they
always did. Why: aiohttp.web's per-request and per-chunk machinery costs several times
what the relaying itself does (docs/performance.md, docs/fast-path.md).

Every request line the front reads is checked before anything else (``request_head``): what
no parser may accept gets 400 and a close at once. A request head, and then its body, must
arrive within ``client_header_timeout_s`` of its first byte (408 and a close otherwise):
the idle clock alone restarts at every byte, so a client trickling a byte a second would
hold its connection for ever. Connections handed to aiohttp keep that deadline
(``handoff.HandedOff``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from secrets import token_hex
from typing import Callable
from urllib.parse import urlsplit

from multidict import CIMultiDict

from ..core.auth import bearer_token, from_latin1
from ..core.config import ServerConfig
from ..core.cors import is_cors_header
from ..core.errors import BalancerError, PayloadTooLarge, RequestTimeout
from ..io.http1 import client_head, request_bytes
from ..io.wire import UpstreamConnection
from ..io.wire_pool import WirePool
from ..routing.call import ROUTED_PATHS, Answered, Call
from ..state.exchange import Exchange
from .context import AppContext
from .cors import answer_lines
from .errors import error_bytes
from .guards import auth_refusal, request_id_from
from .handoff import HandedOff
from .request_head import MalformedRequest, RequestHead, check_request_line, parse_request_head

log = logging.getLogger("llama_balancer.front")

NATIVE_PATHS = frozenset(ROUTED_PATHS)
MAX_NATIVE_HEAD = 16384  # a longer head goes to aiohttp, which applies max_header_bytes
READ_AHEAD = 1 << 20  # bytes buffered past the request being served before reading pauses


class Front:
    """Owns the listening socket, the native connections and the upstream pool."""

    def __init__(self, ctx: AppContext, hand_off: Callable[[], asyncio.Protocol], pool: WirePool) -> None:
        self.ctx = ctx
        self.hand_off = hand_off  # aiohttp's RequestHandler factory (runner.server)
        self.pool = pool
        self.connections: set[FrontConnection] = set()
        self.closing = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._addresses: dict[str, tuple[str, int, bool, str]] = {}

    async def listen(self, host: str, port: int, backlog: int = 4096) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: FrontConnection(self), host, port, backlog=backlog,
                                                reuse_address=True)
        self._sweeper = loop.create_task(self._close_stale_connections())
        return self._server.sockets[0].getsockname()[1]

    async def _close_stale_connections(self) -> None:
        """Descriptors are finite. A client connection with no request in progress closes
        after ``client_idle_timeout_s`` without a byte (idle keep-alive), and with 408 when
        the request it is sending (head, then body) took over ``client_header_timeout_s``
        since its first byte, however steadily the bytes trickle."""
        while True:
            options = self.ctx.config.balancer
            idle, header = options.client_idle_timeout_s, options.client_header_timeout_s
            await asyncio.sleep(min(idle / 4, header / 4, 5.0))
            now = time.monotonic()
            for conn in [c for c in self.connections if c.task is None]:
                if conn.receiving_since is not None and now - conn.receiving_since > header:
                    conn.time_out(header)
                elif now - conn.last_active > idle:
                    conn.close()

    def stop_listening(self) -> None:
        """No new connections; idle native ones close, busy ones close after their answer."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()

    async def drain(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for native requests in flight, then cut what is left."""
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


class FrontConnection(asyncio.Protocol):
    """One client connection while the native front serves it."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.upstream: UpstreamConnection | None = None
        self.head_sent = False
        self.keep_alive = True
        self.last_active = time.monotonic()  # the last byte read, or the last answer's end
        self.receiving_since: float | None = None  # first byte of the head (then body) being read
        self._parsed: tuple[int, RequestHead] | None = None  # a head whose body is still arriving
        self._line_checked = False  # the request line of a head still arriving passed
        self._reading_paused = False
        self._writing_paused = False
        self._cors: list[str] = []  # CORS header lines for the answer being served (cors_origins)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self.front.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        if self.task is not None:
            self.task.cancel()  # the client went away: the upstream request ends with it

    def data_received(self, data: bytes) -> None:
        now = self.last_active = time.monotonic()
        if self.receiving_since is None:
            self.receiving_since = now
        self.buffer += data
        try:
            if self.task is None:
                self._next()
            elif len(self.buffer) > READ_AHEAD and not self._reading_paused and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()
        except Exception as exc:  # nothing may escape a protocol callback (asyncio logs a traceback)
            log.error("unexpected %s reading a request from %s: %s", type(exc).__name__, self.peer, exc)
            self._refuse(BalancerError("internal error in llama-balancer"))

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.upstream is not None and self.upstream.relaying_to(self.transport):
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.upstream is not None and self.upstream.relaying_to(self.transport):
            self.upstream.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()

    def time_out(self, timeout: float) -> None:
        """The request being received missed its deadline: 408, and the connection closes."""
        part = "body" if self._parsed is not None else "head"
        log.debug("closing a connection from %s whose request %s took over %s s", self.peer, part, timeout)
        self._refuse(RequestTimeout(f"the request {part} did not arrive within {timeout:g} s"))

    def _refuse(self, exc: BalancerError) -> None:
        """Answer ``exc`` (unless an answer is under way) and close: no request in progress."""
        self.buffer = bytearray()
        self._parsed = None
        self.keep_alive = False
        if self.task is not None:
            self.abort()
            return
        self.head_sent = False
        self.front.ctx.recorder.refused(exc)
        self._answer_error(exc, token_hex(16))
        self.close()

    # -- requests

    def _next(self) -> None:
        """Serve the next request in the buffer natively, or hand the connection over."""
        buf = self.buffer
        if self._parsed is not None:
            end, head = self._parsed
        else:
            if buf[:2] == b"\r\n" and buf[2:4] != b"\r\n":
                del buf[:2]  # RFC 9112 2.2: one empty line before a request line is ignored
            ctx = self.front.ctx
            longest = min(MAX_NATIVE_HEAD, ctx.config.balancer.max_header_bytes)
            end = buf.find(b"\r\n\r\n", 0, longest + 4)
            if end < 0:
                self._head_incomplete(longest)
                return
            try:
                parsed = parse_request_head(bytes(buf[:end]), NATIVE_PATHS, ctx.config.balancer.max_headers)
            except MalformedRequest as exc:
                self._malformed(exc)
                return
            if parsed is None:
                self._hand_off()
                return
            head = parsed
            self._line_checked = False
            if head.length > ctx.config.balancer.max_body_bytes:
                self.receiving_since = None
                self._start(head, b"", too_large=True)
                return
            self._parsed = end, head
            self.receiving_since = time.monotonic()  # the body's own deadline starts
        stop = end + 4 + head.length
        if len(buf) < stop:
            return
        body = bytes(buf[end + 4:stop])
        del buf[:stop]
        self._parsed = None
        self.receiving_since = None
        self._start(head, body)

    def _head_incomplete(self, longest: int) -> None:
        """A head still arriving: its request line is checked as soon as it is complete (an
        HTTP/0.9 line, or garbage, gets its 400 now, not when the idle clock runs out); a head
        longer than the front reads goes to aiohttp, which applies max_header_bytes per line."""
        buf = self.buffer
        if not self._line_checked:
            line_end = buf.find(b"\n", 0, longest + 1)
            if line_end >= 0:
                try:
                    if buf[line_end - 1:line_end] != b"\r":
                        raise MalformedRequest("the request line must end with CRLF")
                    check_request_line(bytes(buf[:line_end - 1]))
                except MalformedRequest as exc:
                    self._malformed(exc)
                    return
                self._line_checked = True
        if len(buf) > longest:
            self._hand_off()

    def _malformed(self, exc: MalformedRequest) -> None:
        log.warning("refused a malformed request from %s: %s", self.peer, exc.message)
        self._refuse(exc)

    def _start(self, head: RequestHead, body: bytes, too_large: bool = False) -> None:
        self.head_sent = False
        self.keep_alive = head.keep_alive and not too_large
        self.task = asyncio.get_running_loop().create_task(self._serve(head, body, too_large))

    def _hand_off(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.front.connections.discard(self)
        if self._reading_paused:
            transport.resume_reading()
        ctx = self.front.ctx
        handler = HandedOff(self.front.hand_off(), lambda: ctx.config.balancer.client_header_timeout_s,
                            self.receiving_since if self.buffer else None)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.buffer:
            handler.data_received(bytes(self.buffer))
        self.buffer = bytearray()
        self.transport = None

    async def _serve(self, head: RequestHead, body: bytes, too_large: bool) -> None:
        ctx = self.front.ctx
        headers = CIMultiDict(head.headers)
        request_id = request_id_from(headers.get("X-Request-Id"))
        ex: Exchange | None = None
        error: BaseException | None = None
        self._cors = answer_lines(ctx.config.balancer.cors_origins, headers.get("Origin"))
        try:
            token = bearer_token(from_latin1(headers.get("Authorization")), from_latin1(headers.get("x-api-key")))
            refusal = auth_refusal(ctx.auth, head.method, head.path, token)
            if refusal is not None:
                ctx.recorder.refused(refusal)
                self._answer_error(refusal, request_id)
                return
            ex = ctx.recorder.begin(request_id, head.path, head.path, headers.get("X-Forwarded-For"), self.peer)
            if too_large:
                limit = ctx.config.balancer.max_body_bytes
                raise PayloadTooLarge(f"request body of {head.length} bytes exceeds the limit of {limit} bytes")
            await ctx.router.route(Call(head.method, head.path, head.target, headers, body), ex, self._attempt)
        except BalancerError as exc:
            error = exc
            self._answer_error(exc, request_id)
        except (asyncio.CancelledError, ConnectionError) as exc:
            error = exc  # the client went away (or the balancer stops): nobody to answer
        except Exception as exc:
            error = exc
            log.exception("unexpected error on %s %s", head.method, head.path)
            self._answer_error(BalancerError("internal error in llama-balancer"), request_id)
        finally:
            try:
                if ex is not None:
                    ctx.recorder.finish(ex, error)
            except Exception:  # bookkeeping must never stall the connection
                log.exception("recording %s %s failed", head.method, head.path)
            self._done()

    def _done(self) -> None:
        """The answer is out: read on, serve what is buffered, or close."""
        self.task = None
        self.upstream = None
        self._cors = []
        self.last_active = time.monotonic()
        self.receiving_since = self.last_active if self.buffer else None  # a pipelined request's clock
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.keep_alive or self.front.closing:
            transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if self.buffer:
            self._next()

    def _answer_error(self, exc: BalancerError, request_id: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.head_sent:  # an answer began: cutting the connection is the only honest end
            transport.abort()
            return
        self.head_sent = True
        transport.write(error_bytes(exc, request_id, close=not self.keep_alive or self.front.closing,
                                    extra=self._cors))

    async def _attempt(self, server: ServerConfig, call: Call, headers: CIMultiDict[str], body: bytes, ex: Exchange,
                       last_try: bool, answered: Answered) -> None:
        """One try on one backend over a pooled upstream connection (routing.call.Attempt)."""
        name = ex.server or ""
        host, port, tls, host_header = self.front.address_of(server)
        where = f"backend {name!r} ({server.model_base}{call.path_qs})"
        request = request_bytes(call.method, call.path_qs, host_header, headers.items(), body)
        conn, answer = await self.front.pool.exchange(host, port, tls, request, name, where)
        try:
            answered(answer.status)  # raises RetryElsewhere for a status retried elsewhere
            ex.status, ex.streamed = answer.status, answer.event_stream
            transport = self.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client went away")
            if self.front.ctx.config.balancer.cors_origins:  # ours replace the backend's
                answer = replace(answer, relayed=[line for line in answer.relayed
                                                  if not is_cors_header(line.partition(":")[0])] + self._cors)
            head, self.keep_alive = client_head(answer, ex.request_id, self.keep_alive and not self.front.closing)
            self.upstream = conn
            if self._writing_paused:
                conn.pause_reading()
            self.head_sent = True
            try:
                await conn.relay(transport, head, ex)
            except BalancerError as exc:
                self._broken(exc, ex)
        except BaseException:
            conn.abort()
            raise

    def _broken(self, exc: BaseException, ex: Exchange) -> None:
        """The answer started and cannot finish: the client's connection ends without a proper
        end of body, so no truncated answer ever looks complete."""
        transport = self.transport
        if transport is None or transport.is_closing():
            ex.outcome = "client_closed"
            return
        ex.outcome = "upstream_error"
        log.warning("answer from %s broke off: %s", ex.server, exc)
        transport.abort()
