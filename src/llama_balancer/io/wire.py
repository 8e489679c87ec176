"""Upstream HTTP/1.1 at the protocol level: one connection to a backend (pooled by
``wire_pool.WirePool``), relaying an answer's body bytes straight to the client's transport.

Why not aiohttp's client here: for every answer it builds response objects and header
multidicts, and every chunk of a stream wakes a task through a ``StreamReader``. Here the
answer's head is parsed once, then ``data_received`` writes each piece to the client as it
is (no re-chunking, no copy, no task switch) and parses only enough of the framing
(Content-Length or chunked) to know where the answer ends. docs/performance.md measures it.

Errors are ours (``UpstreamError`` kinds) from the start: ``connect``, ``timeout``, ``reset``,
``protocol``.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ..core.errors import UpstreamError, UpstreamTimeout
from ..core.usage import TAIL_BYTES, head_of
from ..state.exchange import Exchange
from .http1 import AnswerFraming, AnswerHead, ChunkedScanner

if TYPE_CHECKING:
    from .wire_pool import WirePool

MAX_HEAD_BYTES = 65536


class UpstreamConnection(asyncio.Protocol):
    """One connection to a backend; carries one exchange at a time, then goes back to the pool."""

    def __init__(self, pool: "WirePool", key: tuple[str, int, bool]) -> None:
        self._pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.forgotten = False  # the pool has counted its close
        self.reused = 0  # exchanges carried before the current one
        self.idle_since = 0.0
        # How long it may idle in the pool: a second less than the backend keeps it (its
        # Keep-Alive timeout; llama-server's is 5 s), so we never write into its close.
        self.keepalive_s = float("inf")
        self._head_buf = bytearray()
        self._head: asyncio.Future[AnswerHead] | None = None
        self._answer: AnswerHead | None = None
        self._pending: list[bytes] = []  # body bytes read before relay() began
        self._sink: asyncio.Transport | None = None
        self._done: asyncio.Future[None] | None = None
        self._remaining = 0
        self._scanner: ChunkedScanner | None = None
        self._framing: AnswerFraming | None = None  # llhttp, checking every byte of the answer
        self._exchange: Exchange | None = None
        self._kept = 0
        self._got_bytes = False
        self._last_read = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._where = ""
        self._paused = False
        self._failed: UpstreamError | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._answer is not None and self._sink is None:
            return  # the head is out: relay() finds the rest and the close
        self._closed_during_answer(exc)

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._idle_timer is not None:
            self._last_read = time.monotonic()
        if self._sink is not None:
            self._relay(data)
        elif self._answer is not None:
            self._pending.append(data)
        elif self._head is not None:
            self._read_head(data)
        # bytes on an idle connection: nothing asked for them; the next exchange would be
        # confused by them, so the connection is not reused
        elif self.transport is not None:
            self.transport.abort()

    # -- one exchange

    def start(self, request: bytes, where: str, idle_timeout_s: float | None) -> asyncio.Future[AnswerHead]:
        """Send ``request``; the future gives the answer's head."""
        loop = asyncio.get_running_loop()
        self._where = where
        self._failed = None
        self._head = loop.create_future()
        self._got_bytes = False
        if idle_timeout_s is not None:
            self._last_read = time.monotonic()
            self._idle_timer = loop.call_later(idle_timeout_s, self._check_idle, idle_timeout_s)
        assert self.transport is not None
        self.transport.write(request)
        return self._head

    def relay(self, sink: asyncio.Transport, client_head: bytes, exchange: Exchange) -> asyncio.Future[None]:
        """Write ``client_head`` then the body to ``sink`` as it arrives; the future ends with
        the answer (at once when it is already complete) or fails with UpstreamError."""
        answer = self._answer
        done = asyncio.get_running_loop().create_future()
        if answer is None:  # it failed (timed out) between its head and now
            done.set_exception(self._failed or UpstreamError(f"{self._where} failed", kind="reset"))
            return done
        self._done = done
        self._exchange = exchange
        self._sink = sink
        if not answer.has_body:
            sink.write(client_head)
            self._finish()
            return done
        self._remaining = answer.length
        self._scanner = ChunkedScanner() if answer.chunked else None
        pending, self._pending = self._pending, []
        if pending:
            self._relay(pending[0] if len(pending) == 1 else b"".join(pending), client_head)
        else:
            sink.write(client_head)
            if self._remaining == 0 and self._scanner is None:
                self._finish()  # Content-Length: 0, nothing more will come
                return done
        if self.closed and self._sink is not None:
            self._closed_during_answer(None)
        return done

    def relaying_to(self, sink: asyncio.BaseTransport | None) -> bool:
        """Whether this connection is relaying an answer to ``sink`` right now."""
        return self._sink is sink and sink is not None

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
        """Give up this exchange: the connection closes (a backend notices a gone client)."""
        self._stop_idle_timer()
        for future in (self._head, self._done):
            if future is not None and not future.done():
                future.cancel()
        self._reset()
        if self.transport is not None:
            self.transport.abort()

    # -- internals

    def _closed_during_answer(self, exc: Exception | None) -> None:
        answer = self._answer
        if answer is not None and answer.length < 0 and not answer.chunked:
            self._finish()  # a close-delimited body ends here
            return
        self._fail(UpstreamError(f"{self._where} closed the connection{': ' + str(exc) if exc else ''}",
                                 kind="reset", server=self._pool_server()))

    # -- internals

    def _read_head(self, data: bytes) -> None:
        buf = self._head_buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                self._fail(UpstreamError(f"{self._where} sent a head over {MAX_HEAD_BYTES} bytes",
                                         kind="protocol", server=self._pool_server()))
            return
        framing = AnswerFraming()
        try:
            answer = framing.head(bytes(buf[:end]))
        except ValueError as exc:
            self._fail(UpstreamError(f"{self._where} sent a malformed answer: {exc}", kind="protocol",
                                     server=self._pool_server()))
            return
        if answer.status < 200:  # 1xx: an interim answer; the real one follows
            del buf[:end + 4]
            if buf:
                rest = bytes(buf)
                buf.clear()
                self._read_head(rest)
            return
        self._answer, self._framing = answer, framing
        if len(buf) > end + 4:
            self._pending.append(bytes(buf[end + 4:]))
        buf.clear()
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(answer)

    def _relay(self, data: bytes, client_head: bytes | None = None) -> None:
        """Pass ``data`` (body bytes) on, with the client's head before it the first time."""
        ex = self._exchange
        assert ex is not None and self._sink is not None
        if ex.first_byte is None:
            ex.first_byte = time.monotonic()
        end = -1
        framing = self._framing
        try:
            if framing is not None:
                framing.body(data)  # llhttp refuses what must never be relayed
            if self._scanner is not None:
                end = self._scanner.feed(data, self._keep)
                if (end >= 0) != (framing is not None and framing.complete):
                    raise ValueError("the answer's end is unclear")
            elif self._remaining >= 0:
                if len(data) >= self._remaining:
                    end = self._remaining
                self._remaining -= len(data)
                self._keep(data if end < 0 else data[:end])
            else:
                self._keep(data)
        except ValueError as exc:
            self._fail(UpstreamError(f"{self._where} sent a malformed answer body: {exc}", kind="protocol",
                                     server=self._pool_server()))
            return
        if end >= 0 and end < len(data):
            data = data[:end]
            self._answer.keep_alive = False  # type: ignore[union-attr]  # bytes past the end: no reuse
        sink = self._sink
        if not sink.is_closing():
            sink.write(data if client_head is None else client_head + data)
        if end >= 0:
            self._finish()

    def _keep(self, piece: bytes) -> None:
        tail = self._exchange.tail  # type: ignore[union-attr]
        if not tail:  # the answer's first piece: its first event stays too (core.usage.head_of)
            tail.append(head_of(piece))
        tail.append(piece)
        self._kept += len(piece)
        while self._kept - len(tail[1]) >= TAIL_BYTES:
            self._kept -= len(tail.pop(1))

    def _finish(self) -> None:
        """The answer ended: the exchange is done, the connection goes back to the pool."""
        self._stop_idle_timer()
        done = self._done
        answer = self._answer
        keep = answer is not None and answer.keep_alive and not self.closed
        if keep and answer.keepalive_s is not None:  # type: ignore[union-attr]
            self.keepalive_s = max(answer.keepalive_s - 1.0, 0.0)  # type: ignore[union-attr]
        self._reset()
        self.resume_reading()  # a slow client's push-back must not follow the connection
        if keep:
            self.reused += 1
            self._pool.put_back(self)
        elif self.transport is not None and not self.closed:
            self.transport.close()
        if done is not None and not done.done():
            done.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        self._stop_idle_timer()
        head, done = self._head, self._done
        self._failed = error  # for relay(), when the head was out but relaying had not begun
        self._reset()
        if self.transport is not None and not self.closed:
            self.transport.abort()
        for future in (head, done):
            if future is not None and not future.done():
                future.set_exception(error)
                return

    def _reset(self) -> None:
        self._head = self._done = None
        self._answer = self._sink = self._scanner = self._exchange = self._framing = None
        self._pending = []
        self._head_buf.clear()
        self._kept = 0

    def _check_idle(self, idle_timeout_s: float) -> None:
        self._idle_timer = None
        if self._head is None and self._answer is None:
            return  # the exchange is over
        silent = time.monotonic() - self._last_read
        if silent < idle_timeout_s:
            self._idle_timer = asyncio.get_running_loop().call_later(idle_timeout_s - silent, self._check_idle,
                                                                     idle_timeout_s)
            return
        self._fail(UpstreamTimeout(f"{self._where} timed out (no byte for {idle_timeout_s:g} s)", kind="timeout",
                                   server=self._pool_server()))

    def _stop_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _pool_server(self) -> str | None:
        return self._pool.server_of(self.key)

    @property
    def fresh_failure_possible(self) -> bool:
        """A reused connection that failed before any byte came back was most likely closed
        by the backend while idle (a keep-alive race): the request never reached it."""
        return self.reused > 0 and not self._got_bytes
