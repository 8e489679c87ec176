"""A small Redis (RESP2) client on an asyncio protocol: pipelined commands, pub/sub. Replies
are parsed and commands encoded by hiredis (C, the parser redis-py itself uses when present).

Why not redis-py: its asyncio client spent about 380 us of CPU per admit + release pair on
the bench machine (pool checkout, locks, response callbacks), this one about 80-130 us, and
admission is on every request's path. Replies come back in command order on a connection,
so each command is a future in a FIFO; a caller that stops waiting (a timeout) leaves its
future cancelled and the reply is dropped when it comes. Valkey speaks the same protocol.
"""
from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import hiredis

MAX_PENDING = 20_000  # commands awaiting replies on one connection: beyond, it is wedged


class RedisUnavailable(Exception):
    """Redis cannot be reached, or the connection broke or is closed."""


class ReplyError(Exception):
    """An error reply (``-ERR ...``, ``-NOSCRIPT ...``)."""


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> "RedisAddress":
        parts = urlsplit(url)
        db = parts.path.strip("/")
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, int(db) if db else 0,
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None, parts.scheme == "rediss")

    def display(self) -> str:
        """The URL without its password (for snapshots and logs)."""
        auth = f"{self.username or ''}:***@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}{self.host}:{self.port}/{self.db}"


def command(*args: Any) -> bytes:
    """One command in RESP (hiredis encodes it: an array of bulk strings)."""
    return hiredis.pack_command(tuple(a if isinstance(a, (str, bytes, bytearray)) else str(a) for a in args))


def _expire(future: "asyncio.Future[Any]") -> None:
    if not future.done():
        future.set_exception(TimeoutError("Redis did not answer in time"))


def reader() -> hiredis.Reader:
    """hiredis's RESP parser (the one redis-py uses): error replies become ReplyError values,
    bulk strings stay bytes, nil is None; a protocol error raises hiredis.ProtocolError."""
    return hiredis.Reader(replyError=ReplyError)


class RespConnection(asyncio.Protocol):
    """One connection. ``send`` pipelines a command and returns the future of its reply; in
    pub/sub mode (``on_push`` set) every reply goes to ``on_push`` instead."""

    def __init__(self, on_push: Callable[[Any], None] | None = None,
                 on_lost: Callable[["RespConnection"], None] | None = None) -> None:
        self._transport: asyncio.Transport | None = None
        self._reader = reader()
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._on_push = on_push
        self._on_lost = on_lost
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        replies = self._reader
        try:
            replies.feed(data)
            while (value := replies.gets()) is not False:
                self._deliver(value)
        except hiredis.ProtocolError as exc:
            self._fail(RedisUnavailable(f"protocol error: {exc}"))

    def _deliver(self, value: Any) -> None:
        if self._on_push is not None and not self._pending:
            self._on_push(value)
            return
        if not self._pending:
            return
        future = self._pending.popleft()
        if future.done():  # its caller gave up waiting
            return
        if isinstance(value, ReplyError):
            future.set_exception(value)
        else:
            future.set_result(value)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisUnavailable(f"connection lost: {exc}" if exc else "connection closed"))

    def _fail(self, error: RedisUnavailable) -> None:
        first = not self.closed
        self.closed = True
        pending, self._pending = self._pending, deque()
        for future in pending:
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: nobody may be waiting any more
        if self._transport is not None:
            self._transport.close()
        if first and self._on_lost is not None:
            self._on_lost(self)

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        """Write one encoded command; the future gets its reply (or the error)."""
        if self.closed or self._transport is None:
            raise RedisUnavailable("connection closed")
        if len(self._pending) >= MAX_PENDING:
            self._fail(RedisUnavailable("too many replies outstanding: connection wedged"))
            raise RedisUnavailable("connection wedged")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        self._transport.write(payload)
        return future

    def write(self, payload: bytes) -> None:
        """Write without expecting a reply of our own (SUBSCRIBE: its replies are pushes)."""
        if self.closed or self._transport is None:
            raise RedisUnavailable("connection closed")
        self._transport.write(payload)

    def request(self, payload: bytes, timeout: float) -> asyncio.Future[Any]:
        """``send`` with a deadline: the future fails with TimeoutError unless the reply came
        first. Unlike ``asyncio.timeout``, a reply that arrived while this process's loop was
        stalled still counts (the loop delivers received bytes before it runs due timers)."""
        future = self.send(payload)
        handle = asyncio.get_running_loop().call_later(timeout, _expire, future)
        future.add_done_callback(lambda _: handle.cancel())
        return future

    async def call(self, *args: Any, timeout: float) -> Any:
        return await self.request(command(*args), timeout)

    def close(self) -> None:
        self._fail(RedisUnavailable("connection closed"))


async def connect(address: RedisAddress, timeout: float, on_push: Callable[[Any], None] | None = None,
                  on_lost: Callable[[RespConnection], None] | None = None) -> RespConnection:
    """A connection, authenticated and on its database; RedisUnavailable when that fails."""
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context() if address.tls else None
    conn: RespConnection | None = None
    try:
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(lambda: RespConnection(None, on_lost), address.host,
                                                   address.port, ssl=context)
            if address.password is not None:
                auth = (address.username, address.password) if address.username else (address.password,)
                await conn.send(command("AUTH", *auth))
            if address.db:
                await conn.send(command("SELECT", address.db))
    except (OSError, asyncio.TimeoutError, ReplyError, RedisUnavailable) as exc:
        if conn is not None:
            conn._on_lost = None
            conn.close()
        raise RedisUnavailable(f"cannot reach {address.display()}: {exc or type(exc).__name__}") from None
    conn._on_push = on_push
    return conn
