"""The native front over real sockets: keep-alive, pipelining, hand-over to aiohttp on the
same connection, limits, and the upstream pool's reuse of backend connections."""
from __future__ import annotations

import asyncio
import gc
import socket

import orjson

from tests.conftest import assert_nothing_in_flight, server_entry, wait_until

MODEL = "m"


def chat(tokens: int = 4, stream: bool = False, extra_headers: bytes = b"") -> bytes:
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens,
                         "stream": stream})
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%s\r\n%s" % (len(body), extra_headers, body))


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer: status, headers (lower-case names), body (chunked framing undone)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        body += (await reader.readexactly(size + 2))[:size]
        if size == 0:
            return status, headers, body


async def start(sims, balancer, **options):
    sim = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(sim, kind="llama.cpp")}, "models": {MODEL: ["PC1"]},
                              "balancer": options})
    return sim, runtime


async def test_one_connection_serves_chat_then_the_dashboard_api_then_chat_again(sims, balancer, http):
    sim, runtime = await start(sims, balancer)
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    writer.write(chat())
    status, headers, body = await read_answer(reader)
    assert status == 200 and orjson.loads(body)["object"] == "chat.completion" and headers["x-request-id"]
    writer.write(b"GET /llmhealth-snapshot HTTP/1.1\r\nHost: lb\r\n\r\n")  # not native: aiohttp takes over
    status, _, body = await read_answer(reader)
    assert status == 200 and "backends" in orjson.loads(body)
    writer.write(chat(stream=True))  # now served by aiohttp's routed handler, on the same connection
    status, headers, body = await read_answer(reader)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert body.rstrip().endswith(b"data: [DONE]")
    writer.close()
    assert len(sim.events) == 2
    await assert_nothing_in_flight(http, runtime)


async def test_pipelined_requests_are_answered_in_order_each_with_its_own_id(sims, balancer):
    _, runtime = await start(sims, balancer)
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    writer.write(chat(stream=True, extra_headers=b"X-Request-Id: first\r\n") +
                 chat(tokens=2, extra_headers=b"X-Request-Id: second\r\n") +
                 chat(tokens=3, stream=True, extra_headers=b"X-Request-Id: third\r\n"))
    answers = [await read_answer(reader) for _ in range(3)]
    writer.close()
    assert [headers["x-request-id"] for _, headers, _ in answers] == ["first", "second", "third"]
    assert answers[0][2].rstrip().endswith(b"data: [DONE]") and answers[2][2].rstrip().endswith(b"data: [DONE]")
    assert orjson.loads(answers[1][2])["usage"]["completion_tokens"] == 2


async def test_connection_close_is_honoured_after_the_answer(sims, balancer):
    _, runtime = await start(sims, balancer)
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    writer.write(chat(extra_headers=b"Connection: close\r\n"))
    status, headers, _ = await read_answer(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the balancer closed it
    writer.close()


async def test_backend_connections_are_kept_alive_and_reused(sims, balancer, http):
    sim, runtime = await start(sims, balancer)
    for _ in range(5):
        async with http.post(runtime.url + "/v1/chat/completions", json={"model": MODEL, "messages": []}) as r:
            assert r.status == 200
    assert len(sim.events) == 5
    assert runtime.front is not None and runtime.front.pool.open_connections == 1


async def test_a_backend_that_closed_its_pooled_connections_costs_no_retry(sims, balancer, http):
    sim, runtime = await start(sims, balancer)
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(runtime.url + "/v1/chat/completions", json=payload) as first:
        assert first.status == 200
    await sim.set_fault("refuse")  # cuts every connection, the pooled one too
    await sim.set_fault(None)
    async with http.post(runtime.url + "/v1/chat/completions", json=payload) as second:
        assert second.status == 200
    async with http.get(runtime.url + "/metrics") as metrics:
        text = await metrics.text()
    assert "llama_balancer_retries_total{" not in text
    assert runtime.context.registry.state("PC1").failures == 0


async def test_a_declared_body_over_the_limit_gets_413_and_the_connection_closes(sims, balancer, http):
    sim, runtime = await start(sims, balancer, max_body_bytes=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100)
    status, headers, body = await read_answer(reader)
    assert status == 413 and headers["connection"] == "close" and headers["date"].endswith(" GMT")
    assert orjson.loads(body)["error"]["code"] == "payload_too_large"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert sim.events == []
    await assert_nothing_in_flight(http, runtime)


async def test_a_header_with_a_bare_line_feed_is_refused_and_never_reaches_a_backend(sims, balancer):
    sim, runtime = await start(sims, balancer)
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    writer.write(chat(extra_headers=b"X-A: b\nX-Smuggled: c\r\n"))
    status, _, _ = await read_answer(reader)
    writer.close()
    assert status == 400
    assert sim.events == []


async def test_a_client_reading_slowly_pushes_back_and_still_gets_every_byte(sims, balancer, http):
    _, runtime = await start(sims, balancer)
    front = runtime.front
    assert front is not None
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", runtime.port))
    reader, writer = await asyncio.open_connection(sock=client, limit=1024)
    served = await wait_until(lambda: list(front.connections))
    # A slow network: small kernel buffers on both sides, so the balancer's own buffer fills.
    served[0].transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer.write(chat(tokens=8000, stream=True))
    # The client reads nothing yet: the balancer stops reading the backend.
    await wait_until(lambda: any(conn.upstream is not None and conn.upstream._paused for conn in front.connections))
    status, _, body = await read_answer(reader)
    events = [line for line in body.split(b"\n\n") if line.startswith(b"data: {")]
    assert status == 200 and body.rstrip().endswith(b"data: [DONE]") and len(events) >= 8000
    writer.write(chat(tokens=3))  # the same backend connection, no longer held back, serves the next one
    status, _, body = await read_answer(reader)
    assert status == 200 and orjson.loads(body)["usage"]["completion_tokens"] == 3
    assert front.pool.open_connections == 1
    writer.close()
    await assert_nothing_in_flight(http, runtime)


async def test_idle_and_half_sent_connections_are_closed_but_a_long_answer_is_not(sims, balancer):
    sim = await sims(name="PC1", models=[MODEL], fast=False, chunk_delay_s=0.02)
    runtime = await balancer({"servers": {"PC1": server_entry(sim, kind="llama.cpp")}, "models": {MODEL: ["PC1"]},
                              "balancer": {"client_idle_timeout_s": 0.2}})
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    half_reader, half_writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    half_writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\n")  # and nothing more
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    busy_writer.write(chat(tokens=30, stream=True))  # about 0.6 s of answer, three idle timeouts
    status, _, body = await read_answer(busy_reader)
    assert status == 200 and body.rstrip().endswith(b"data: [DONE]")
    assert await asyncio.wait_for(idle_reader.read(), 2) == b""
    assert await asyncio.wait_for(half_reader.read(), 2) == b""
    for writer in (idle_writer, half_writer, busy_writer):
        writer.close()


async def test_a_closed_connection_leaves_no_reference_cycle_for_the_collector(sims, balancer, http):
    """Each connection's adapter and machine, and its reader and llhttp parser, refer to each
    other; released when the connection is over, they go with their last reference, whichever
    way it ended: served and closed by the client, cut mid-answer, handed to aiohttp."""
    from llama_balancer.h1.exchange import ExchangeMachine
    from llama_balancer.h1.requests import RequestReader
    from llama_balancer.http.front_connection import FrontConnection

    sim, runtime = await start(sims, balancer)
    front = runtime.front
    gc.collect()
    gc.disable()
    try:
        for ending in ("served", "cut", "handed", "served"):
            reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
            if ending == "handed":
                writer.write(b"GET /llmhealth HTTP/1.1\r\nHost: lb\r\n\r\n")
                assert (await read_answer(reader))[0] == 200
            else:
                writer.write(chat(tokens=50 if ending == "cut" else 4, stream=ending == "cut"))
                if ending == "cut":
                    await reader.readuntil(b"data: ")  # the stream began: the client leaves mid-answer
                else:
                    assert (await read_answer(reader))[0] == 200
            writer.close()
            await wait_until(lambda: not front.connections)
        await asyncio.sleep(0.05)
        left = [type(o).__name__ for o in gc.get_objects()
                if isinstance(o, (FrontConnection, ExchangeMachine, RequestReader))]
    finally:
        gc.enable()
    assert left == []
    await assert_nothing_in_flight(http, runtime)
