"""One data path for every model endpoint, whatever the framing: chunked request bodies,
``Expect: 100-continue``, HTTP/1.0 clients, pipelining, and model requests on connections
aiohttp served first. Over real sockets, against the simulator."""
from __future__ import annotations

import asyncio

import orjson

from tests.conftest import assert_nothing_in_flight
from tests.integration.test_front import MODEL, chat, read_answer, start

BODY = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})


async def exchange(port: int, data: bytes, answers: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return [await read_answer(reader) for _ in range(answers)]
    finally:
        writer.close()


def served_by_front(runtime) -> int:
    return sum(1 for _ in runtime.front.connections)


async def test_a_chunked_request_body_is_routed_like_any_other(sims, balancer, http):
    sim, runtime = await start(sims, balancer)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(BODY[i:i + 10]), BODY[i:i + 10]) for i in range(0, len(BODY), 10))
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: application/json\r\n\r\n" + chunks + b"0\r\n\r\n")
    ((status, headers, body),) = await exchange(runtime.port, request)
    assert status == 200 and orjson.loads(body)["object"] == "chat.completion"
    assert sim.events[-1]["model"] == MODEL  # the backend got the whole body
    await assert_nothing_in_flight(http, runtime)


async def test_expect_100_continue_gets_its_interim_answer_then_the_routed_answer(sims, balancer, http):
    sim, runtime = await start(sims, balancer)
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(BODY))
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(BODY)
        status, _, body = await read_answer(reader)
    finally:
        writer.close()
    assert status == 200 and orjson.loads(body)["object"] == "chat.completion"


async def test_an_http10_client_gets_a_stream_without_chunked_framing_ended_by_the_close(sims, balancer, http):
    sim, runtime = await start(sims, balancer)
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                         "stream": True})
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = await asyncio.wait_for(reader.read(), 5)  # to the close
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
    assert payload.startswith(b"data: ") and payload.rstrip().endswith(b"data: [DONE]")
    await assert_nothing_in_flight(http, runtime)


async def test_pipelined_posts_in_one_write_are_each_routed_in_order(sims, balancer, http):
    sim, runtime = await start(sims, balancer)
    answers = await exchange(runtime.port, chat() + chat(stream=True) + chat(), answers=3)
    assert [a[0] for a in answers] == [200, 200, 200]
    assert answers[1][1]["content-type"].startswith("text/event-stream")
    assert len({a[1]["x-request-id"] for a in answers}) == 3
    await assert_nothing_in_flight(http, runtime)


async def test_pipelined_error_answers_and_routed_ones_interleave_in_order(sims, balancer, http):
    """An error answer is written as the request is read (on Python 3.12 the routing starts
    at once, inside the read): the next request in the same write waits for its turn."""
    sim, runtime = await start(sims, balancer)
    broken = b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 5\r\n\r\n{nope"
    unnamed = chat().replace(b'"model"', b'"modle"')
    answers = await exchange(runtime.port, broken + chat() + unnamed + broken + chat(stream=True), answers=5)
    assert [a[0] for a in answers] == [400, 200, 400, 400, 200]
    assert orjson.loads(answers[0][2])["error"]["code"] == "invalid_json"
    assert len({a[1]["x-request-id"] for a in answers}) == 5
    many = await exchange(runtime.port, broken * 300 + chat(), answers=301)  # none answered inside another's turn
    assert [a[0] for a in many] == [400] * 300 + [200]
    await assert_nothing_in_flight(http, runtime)


async def test_a_model_request_after_an_aiohttp_served_one_comes_back_to_the_front(sims, balancer, http):
    sim, runtime = await start(sims, balancer)
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: lb\r\n\r\n")
        assert (await read_answer(reader))[0] == 200
        assert served_by_front(runtime) == 0  # aiohttp has it
        writer.write(chat())
        status, _, body = await read_answer(reader)
        assert status == 200 and orjson.loads(body)["object"] == "chat.completion"
        assert served_by_front(runtime) == 1  # back with the front
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: lb\r\n\r\n")  # and to aiohttp again
        assert (await read_answer(reader))[0] == 200
    finally:
        writer.close()
    await assert_nothing_in_flight(http, runtime)


async def test_a_model_request_pipelined_behind_an_aiohttp_one_gets_421_and_a_close(sims, balancer, http):
    sim, runtime = await start(sims, balancer)
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: lb\r\n\r\n" + chat())
        assert (await read_answer(reader))[0] == 200
        status, headers, body = await read_answer(reader)
        assert status == 421 and headers.get("connection") == "close"
        assert orjson.loads(body)["error"]["code"] == "misdirected_request"
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert sim.events == []  # never sent to a backend


async def test_a_foreign_request_pipelined_behind_a_model_one_closes_after_its_answer(sims, balancer, http):
    sim, runtime = await start(sims, balancer)
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        writer.write(chat() + b"GET /v1/models HTTP/1.1\r\nHost: lb\r\n\r\n")
        status, headers, _ = await read_answer(reader)
        assert status == 200 and headers.get("connection") == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the client sends it again elsewhere
    finally:
        writer.close()
