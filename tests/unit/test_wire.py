"""The pooled upstream connection (io/wire.py) and its pool, driven by hand: bytes in
through ``data_received``, a recording transport and sink; no sockets, no timing."""
from __future__ import annotations

import asyncio
from typing import Any

from llama_balancer.io.wire import UpstreamConnection
from llama_balancer.io.wire_pool import WirePool


class Recorder(asyncio.Transport):
    """A transport that keeps what is written and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Sink:
    def __init__(self) -> None:
        self.got: list[Any] = []

    def upstream_data(self, data: bytes, now: float) -> None:
        self.got.append(data)

    def upstream_closed(self, reason: str = "") -> None:
        self.got.append(("closed", reason))


def connection() -> tuple[WirePool, UpstreamConnection, Recorder]:
    pool = WirePool(connect_timeout_s=1, idle_timeout_s=None)
    pool._open = 1  # as _connect counts it
    conn = UpstreamConnection(pool, ("127.0.0.1", 1, False))
    upstream = Recorder()
    conn.connection_made(upstream)
    return pool, conn, upstream


def test_the_backends_bytes_go_to_the_exchange_that_borrowed_the_connection():
    _, conn, upstream = connection()
    sink = Sink()
    conn.attach(sink)
    conn.write(b"request")
    conn.data_received(b"answer")
    assert upstream.written == b"request" and sink.got == [b"answer"]


def test_bytes_on_an_idle_connection_close_it_for_good():
    pool, conn, upstream = connection()
    conn.data_received(b"HTTP/1.1 200 OK\r\n")  # nobody asked: the next answer could not be framed
    assert upstream.closed
    conn.connection_lost(None)
    assert pool.open_connections == 0 and pool._pooled(conn.key) is None


def test_a_close_under_an_exchange_tells_it_once_and_frees_the_pool_place_once():
    pool, conn, _ = connection()
    sink = Sink()
    conn.attach(sink)
    conn.connection_lost(ConnectionResetError("reset"))
    conn.connection_lost(None)
    assert sink.got == [("closed", "reset")] and pool.open_connections == 0


def test_writing_to_a_connection_that_closed_fails_the_exchange_instead():
    _, conn, upstream = connection()
    upstream.closed = True
    sink = Sink()
    conn.attach(sink)
    conn.write(b"request")
    assert upstream.written == b"" and sink.got[0][0] == "closed"


def test_a_released_connection_is_pooled_reading_again_and_kept_a_second_under_the_backends_timeout():
    pool, conn, upstream = connection()
    conn.attach(Sink())
    conn.pause_reading()
    conn.release(True, 5.0)
    assert not upstream.paused and conn.sink is None and conn.reused == 1 and conn.keepalive_s == 4.0
    assert pool.idle_connections == 1 and pool._pooled(conn.key) is conn
    pool.put_back(conn)
    conn.idle_since -= 4.5  # idle longer than the backend's timeout minus a second
    assert pool._pooled(conn.key) is None and upstream.closed


def test_a_connection_released_without_reuse_closes_and_its_late_bytes_reach_nobody():
    pool, conn, upstream = connection()
    sink = Sink()
    conn.attach(sink)
    conn.release(False, None)
    conn.data_received(b"late")
    assert upstream.closed and sink.got == [] and pool.idle_connections == 0
