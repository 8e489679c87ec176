"""The upstream connection's state machine (io/wire.py) driven by hand: bytes in through
``data_received``, a recording transport on each side; no sockets, no timing."""
from __future__ import annotations

import asyncio

import pytest

from llama_balancer.core.errors import UpstreamError
from llama_balancer.io.wire import UpstreamConnection
from llama_balancer.io.wire_pool import WirePool
from llama_balancer.state.exchange import Exchange


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


def connection() -> tuple[WirePool, UpstreamConnection, Recorder]:
    pool = WirePool(connect_timeout_s=1, idle_timeout_s=None)
    conn = UpstreamConnection(pool, ("127.0.0.1", 1, False))
    upstream = Recorder()
    conn.connection_made(upstream)
    return pool, conn, upstream


async def answered(first_read: bytes) -> tuple[WirePool, UpstreamConnection, Recorder]:
    """A connection that sent a request and read ``first_read`` (a head, maybe some body)."""
    pool, conn, upstream = connection()
    head = conn.start(b"req", "backend", None)
    conn.data_received(first_read)
    await head
    return pool, conn, upstream


def exchange() -> Exchange:
    return Exchange(request_id="r", endpoint="/v1/x", endpoint_label="/v1/x", started=0.0, ip="127.0.0.1")


async def test_an_empty_answer_ends_at_once_and_the_connection_is_pooled():
    pool, conn, upstream = connection()
    head = conn.start(b"POST / HTTP/1.1\r\n\r\n", "backend", None)
    assert upstream.written == b"POST / HTTP/1.1\r\n\r\n"
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert (await head).length == 0
    client = Recorder()
    done = conn.relay(client, b"HEAD\r\n\r\n", exchange())
    assert done.done() and done.result() is None
    assert client.written == b"HEAD\r\n\r\n"
    assert pool.idle_connections == 1


async def test_a_chunked_answer_split_anyhow_is_relayed_byte_for_byte_and_ends_on_its_last_chunk():
    pool, conn, _ = connection()
    head = conn.start(b"req", "backend", None)
    wire = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire[:4])
    await head
    client, ex = Recorder(), exchange()
    done = conn.relay(client, b"H|", ex)
    for cut in range(4, len(wire), 3):
        assert not done.done()
        conn.data_received(wire[cut:cut + 3])
    await done
    assert bytes(client.written) == b"H|" + wire
    assert b"".join(ex.tail) == b"hello world" and ex.first_byte is not None
    assert pool.idle_connections == 1


async def test_a_body_delimited_by_close_ends_with_the_connection():
    pool, conn, _ = await answered(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
    client = Recorder()
    done = conn.relay(client, b"H|", exchange())
    conn.data_received(b"part two")
    assert not done.done()
    conn.connection_lost(None)
    await done
    assert client.written == b"H|part one, part two"
    assert pool.idle_connections == 0


async def test_a_reset_mid_body_fails_the_exchange_and_the_connection_is_not_reused():
    pool, conn, _ = await answered(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
    done = conn.relay(Recorder(), b"H|", exchange())
    conn.connection_lost(ConnectionResetError("reset"))
    with pytest.raises(UpstreamError) as failure:
        await done
    assert failure.value.kind == "reset"
    assert pool.idle_connections == 0


async def test_bytes_past_the_declared_length_are_not_relayed_and_the_connection_is_not_reused():
    pool, conn, upstream = await answered(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
    client = Recorder()
    await conn.relay(client, b"H|", exchange())
    assert client.written == b"H|ok"
    assert pool.idle_connections == 0 and upstream.closed


async def test_a_connection_paused_for_a_slow_client_is_resumed_before_it_is_pooled():
    pool, conn, upstream = await answered(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    client = Recorder()
    done = conn.relay(client, b"H|", exchange())
    assert conn.relaying_to(client)
    conn.pause_reading()
    assert upstream.paused
    conn.data_received(b"done")  # the last bytes arrived with the push-back on
    await done
    assert not upstream.paused and pool.idle_connections == 1 and not conn.relaying_to(client)


async def test_an_answer_that_fails_between_its_head_and_the_relay_fails_the_relay():
    pool, conn, _ = await answered(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    conn._check_idle(0.0)  # the idle timeout fires before the front began relaying
    with pytest.raises(UpstreamError) as failure:
        await conn.relay(Recorder(), b"H|", exchange())
    assert failure.value.kind == "timeout"
    assert pool.idle_connections == 0


# --- strict framing: llhttp refuses what must never reach a client -------------------------

@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nX-A: a\nSet-Cookie: x\r\nContent-Length: 0\r\n\r\n",  # bare LF: header injection
    b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",  # bare CR
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",  # conflicting lengths
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",  # both framings
])
async def test_a_malformed_answer_head_fails_before_any_byte_reaches_the_client(head):
    pool, conn, upstream = connection()
    started = conn.start(b"req", "backend", None)
    conn.data_received(head)
    with pytest.raises(UpstreamError) as failure:
        await started
    assert failure.value.kind == "protocol" and upstream.closed  # 502 upstream of the client, no reuse
    assert pool.idle_connections == 0


@pytest.mark.parametrize("size_line", [b"0x3", b"1_0", b"-1", b"+3", b"3 \n"])
async def test_a_bad_chunk_size_mid_answer_fails_the_relay_and_is_never_relayed(size_line):
    pool, conn, upstream = await answered(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    client = Recorder()
    done = conn.relay(client, b"HEAD\r\n\r\n", exchange())
    conn.data_received(b"2\r\nok\r\n")
    conn.data_received(size_line + b"\r\nabc\r\n0\r\n\r\n")
    with pytest.raises(UpstreamError) as failure:
        await done
    assert failure.value.kind == "protocol" and upstream.closed
    assert bytes(client.written) == b"HEAD\r\n\r\n2\r\nok\r\n"  # the bad piece never crossed
    assert pool.idle_connections == 0


async def test_a_pooled_connection_is_not_reused_past_the_backends_keep_alive_timeout():
    """llama-server answers ``Keep-Alive: timeout=5`` and closes an idle connection then;
    the pool keeps it a second less, so no request is ever written into that close."""
    pool, conn, upstream = await answered(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5, max=100\r\n\r\n")
    done = conn.relay(Recorder(), b"HEAD\r\n\r\n", exchange())
    conn.data_received(b"ok")
    await done
    assert pool.idle_connections == 1 and conn.keepalive_s == 4.0
    assert pool._pooled(conn.key) is conn  # fresh: reused
    pool.put_back(conn)
    conn.idle_since -= 4.5  # idle longer than the backend's timeout minus a second
    assert pool._pooled(conn.key) is None and upstream.closed


async def test_a_long_stream_keeps_its_first_event_beside_the_tail_for_the_usage_read_there():
    from llama_balancer.core.usage import TAIL_BYTES, usage_from_tail
    start = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
             b'{"cache_read_input_tokens":10,"input_tokens":1,"output_tokens":0}}}\n\n')
    delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"x"}}\n\n'
    end = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":400}}\n\n'
    pieces = [start + delta] + [delta] * 400 + [end]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    _, conn, _ = await answered(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    client, ex = Recorder(), exchange()
    done = conn.relay(client, b"H|", ex)
    for cut in range(0, len(wire), 1000):
        conn.data_received(wire[cut:cut + 1000])
    await done
    assert ex.tail[0] == start, "the first event stays"
    assert TAIL_BYTES <= sum(map(len, ex.tail[1:])) < TAIL_BYTES + 1000, "the rest is the tail"
    assert (usage_from_tail(b"".join(ex.tail)).prompt_tokens, usage_from_tail(b"".join(ex.tail)).completion_tokens) \
        == (11, 400)
