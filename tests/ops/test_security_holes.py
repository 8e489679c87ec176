"""Regression tests for reported security holes, over real sockets (raw where the attack
needs bytes no client library sends): auth on the open endpoints' other methods, slow
heads and bodies (slowloris), control characters in the request line, keys that are not
UTF-8, Content-Length digits that are not ASCII, and HTTP/0.9 or empty request lines."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import assert_nothing_in_flight, server_entry

MODEL = "m"
KEYS = {"api_keys": ["client-key", "clé-ü"], "admin_keys": ["admin-key"]}
OPEN_PATHS = ["/llmhealth", "/favicon.ico"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
HEADER_TIMEOUT = 0.5


# -- helpers


def chat_body(tokens: int = 2) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens})


def chat_head(length: int, extra: bytes = b"", target: bytes = b"/v1/chat/completions") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: lb\r\nAuthorization: Bearer client-key\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (target, length, extra))


async def send(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection and read until the balancer closes it: (everything
    read, seconds until the close). Fails when the connection is still open after ``timeout``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(), timeout)
        return answer, time.monotonic() - started
    finally:
        writer.close()


async def read_one(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One answer with a Content-Length body, on a connection that stays open."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await asyncio.wait_for(reader.readexactly(length), 5)


def status_of(answer: bytes) -> int:
    assert answer, "the connection closed without an answer"
    return int(answer.split(b" ", 2)[1])


def json_of(answer: bytes) -> dict[str, Any]:
    return orjson.loads(answer.split(b"\r\n\r\n", 1)[1])


def error_of(answer: bytes) -> dict[str, Any]:
    return json_of(answer)["error"]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records that carry a traceback, or asyncio's 'Fatal error on transport' kind."""
    return [r for r in caplog.records if r.exc_info or "Fatal error" in r.getMessage()]


async def trickle(port: int, data: bytes, every: float, at_once: bytes = b"") -> tuple[bytes, float]:
    """Send ``at_once``, then ``data`` one byte every ``every`` seconds (a bounded loop: ``data``
    is finite) until the balancer closes the connection; then what it answered, and when
    (from the first byte)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = b""
    try:
        writer.write(at_once)
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            try:
                answer += await asyncio.wait_for(reader.read(65536), every)
            except asyncio.TimeoutError:
                continue
            if reader.at_eof():
                break
        else:
            answer += await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        pass  # closed while we wrote: what was answered is in ``answer``
    finally:
        writer.close()
    return answer, time.monotonic() - started


# -- fixtures


@pytest.fixture
async def recorder():
    """A fallback backend that records every request it gets: (method, path)."""
    seen: list[tuple[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/v1/models":  # the balancer's model discovery
            return web.json_response({"object": "list", "data": []})
        seen.append((request.method, request.path))
        try:
            body = await request.read()
        except ConnectionError:  # the balancer gave up on the upload
            return web.Response(status=499)
        return web.json_response({"from": "fallback", "method": request.method, "body_len": len(body)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1], seen
    await runner.cleanup()


@pytest.fixture
async def keyed(sims, balancer, recorder):
    """``await keyed(header_timeout)``: a balancer with client and admin keys, model ``m`` on a
    sim, and everything else (the catch-all proxy) going to the recorder."""
    port, seen = recorder

    async def start(header_timeout: float = HEADER_TIMEOUT):
        pc1 = await sims(name="PC1", models=[MODEL])
        fallback = {"addr": "http://127.0.0.1", "health-port": pc1.port, "model-port": port, "kind": "agent"}
        runtime = await balancer({
            "servers": {"PC1": server_entry(pc1, kind="llama.cpp"), "FB": fallback},
            "models": {MODEL: ["PC1"]}, "fallback_server": "FB", "auth": KEYS,
            "balancer": {"client_header_timeout_s": header_timeout, "client_idle_timeout_s": 30}})
        return runtime, pc1, seen
    return start


@pytest.fixture
async def admin_http():
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-key"}) as session:
        yield session


# -- 1. the open endpoints are open for GET and HEAD only


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("path", OPEN_PATHS)
async def test_an_open_endpoint_is_open_only_for_the_methods_it_serves(keyed, admin_http, path, method):
    """Any other method on an open path fell through to the catch-all proxy with no key."""
    runtime, _, seen = await keyed()
    body = b"" if method in ("GET", "HEAD") else b"x"
    answer, _ = await send(runtime.port, b"%s %s HTTP/1.1\r\nHost: lb\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                           % (method.encode(), path.encode(), len(body), body))
    if method in ("GET", "HEAD"):
        assert status_of(answer) == (200 if path == "/llmhealth" else 204)
    else:
        assert status_of(answer) == 401
        assert b"WWW-Authenticate: Bearer" in answer and error_of(answer)["code"] == "invalid_api_key"
    assert seen == []  # nothing reached the fallback backend
    await assert_nothing_in_flight(admin_http, runtime)


async def test_with_a_key_other_methods_on_an_open_path_still_reach_the_fallback(keyed):
    runtime, _, seen = await keyed()
    answer, _ = await send(runtime.port, b"POST /llmhealth HTTP/1.1\r\nHost: lb\r\nAuthorization: Bearer client-key\r\n"
                                         b"Content-Length: 1\r\nConnection: close\r\n\r\nx")
    assert status_of(answer) == 200 and json_of(answer)["from"] == "fallback"
    assert seen == [("POST", "/llmhealth")]


# -- 2. slow heads and bodies are closed at a deadline from their first byte


async def test_trickled_heads_are_closed_at_the_deadline_while_normal_clients_are_served(keyed, admin_http):
    """50 clients sending a head a byte every 0.1 s kept their connections for ever: the idle
    clock restarts at every byte. Meanwhile a normal client must keep being served."""
    runtime, _, _ = await keyed()
    head = chat_head(100)  # ~130 bytes: 13 s at this pace, far past the deadline
    slow = [asyncio.create_task(trickle(runtime.port, head, 0.1)) for _ in range(50)]
    served = 0
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer client-key"}) as client:
        while not all(task.done() for task in slow) and served < 100:
            async with client.post(runtime.url + "/v1/chat/completions", data=chat_body()) as response:
                assert response.status == 200
            async with client.get(runtime.url + "/v1/models") as response:  # aiohttp's side
                assert response.status == 200
            served += 1
            await asyncio.sleep(0.02)
    results = await asyncio.gather(*slow)
    assert served >= 5
    for answer, elapsed in results:
        assert status_of(answer) == 408 and error_of(answer)["code"] == "request_timeout"
        assert HEADER_TIMEOUT <= elapsed < HEADER_TIMEOUT + 2.0
    assert not runtime.front.connections or all(c.receiving_since is None for c in runtime.front.connections)
    await assert_nothing_in_flight(admin_http, runtime)


async def test_a_head_trickled_on_a_connection_aiohttp_serves_is_closed_at_the_deadline(keyed):
    """After one request aiohttp served, the connection is aiohttp's; its keep-alive timer
    does not see a head that trickles in either."""
    runtime, _, _ = await keyed()
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        writer.write(b"GET /llmhealth HTTP/1.1\r\nHost: lb\r\n\r\n")
        assert (await read_one(reader))[0] == 200
        started = time.monotonic()
        answer = await trickle_on(reader, writer, b"GET /v1/models HTTP/1.1\r\nHost: lb\r\nX-Slow: " + b"a" * 100)
        elapsed = time.monotonic() - started
    finally:
        writer.close()
    assert status_of(answer) == 408 and reader.at_eof()
    assert HEADER_TIMEOUT <= elapsed < HEADER_TIMEOUT + 1.5


async def trickle_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    """Send ``data`` a byte every 0.1 s (bounded by its length) until the balancer closes;
    returns what it answered."""
    answer = b""
    for byte in data:
        writer.write(bytes([byte]))
        try:
            answer += await asyncio.wait_for(reader.read(65536), 0.1)
        except asyncio.TimeoutError:
            continue
        if reader.at_eof():
            break
    return answer


async def test_a_long_head_handed_to_aiohttp_half_way_keeps_its_deadline(keyed):
    """A head longer than the front reads goes to aiohttp unfinished: its clock goes along."""
    runtime, _, _ = await keyed()
    start = b"GET /v1/models HTTP/1.1\r\nHost: lb\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 4000) for i in range(3))
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    started = time.monotonic()
    try:
        writer.write(start)  # 12 kB: past the front's 8 kB, no blank line yet
        answer = await trickle_on(reader, writer, b"X-Slow: " + b"a" * 100)
        elapsed = time.monotonic() - started
    finally:
        writer.close()
    assert status_of(answer) == 408 and reader.at_eof()
    assert HEADER_TIMEOUT <= elapsed < HEADER_TIMEOUT + 1.5


async def test_a_routed_body_that_trickles_past_the_deadline_gets_408_and_nothing_stays_in_flight(keyed, admin_http):
    runtime, pc1, _ = await keyed()
    body = chat_body()
    answer, elapsed = await trickle(runtime.port, body, 0.05, at_once=chat_head(len(body)))
    assert status_of(answer) == 408 and b"request body" in answer
    assert HEADER_TIMEOUT <= elapsed < HEADER_TIMEOUT + 1.5
    assert pc1.events == []  # never sent on
    await assert_nothing_in_flight(admin_http, runtime)


@pytest.mark.parametrize("target", [b"/v1/chat/completions", b"/sim/echo"])
async def test_a_body_trickled_to_aiohttp_gets_408_and_nothing_stays_in_flight(keyed, admin_http, target):
    """The routed handler and the catch-all proxy read bodies as aiohttp serves them (here a
    connection aiohttp took over after its first request). The 408 comes at the deadline;
    aiohttp then reads what is left of the body (its lingering close) and closes."""
    runtime, pc1, seen = await keyed()
    body = chat_body()
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        writer.write(b"GET /llmhealth HTTP/1.1\r\nHost: lb\r\n\r\n")
        assert (await read_one(reader))[0] == 200
        writer.write(chat_head(len(body), target=target))
        started = time.monotonic()
        sent = 0
        answer = None
        while answer is None and sent < len(body):  # ~80 bytes: 4 s at this pace at most
            writer.write(body[sent:sent + 1])
            sent += 1
            try:
                answer = await asyncio.wait_for(read_one(reader), 0.05)
            except asyncio.TimeoutError:
                continue
        elapsed = time.monotonic() - started
        assert answer is not None, "no answer while the body trickled"
        writer.write(body[sent:])  # the rest at once: read and dropped, then the connection closes
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    status, payload = answer
    assert status == 408 and orjson.loads(payload)["error"]["code"] == "request_timeout"
    assert HEADER_TIMEOUT <= elapsed < HEADER_TIMEOUT + 1.5
    assert pc1.events == []
    await assert_nothing_in_flight(admin_http, runtime)


async def test_a_chunked_body_over_the_limit_on_the_catch_all_proxy_gets_413_not_502(sims, balancer, http):
    """The proxy hands the client's body to aiohttp's client, which wraps what our reader
    raises (413 here, 408 above) as a connection error: it is ours, and answered as ours."""
    pc1 = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "balancer": {"max_body_bytes": 1024}})

    async def chunks():
        for _ in range(10):
            yield b"x" * 1000

    async with http.post(runtime.url + "/sim/echo", data=chunks()) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "payload_too_large"
    await assert_nothing_in_flight(http, runtime)


async def test_the_header_deadline_is_a_config_knob_with_a_sane_default():
    from llama_balancer.core.config import config_from_data
    assert config_from_data({"servers": {"A": {"addr": "http://h", "health-port": 1, "model-port": 2}}}
                            ).balancer.client_header_timeout_s == 60.0


# -- 3. control characters in the request line


@pytest.mark.parametrize("ctl", [b"\t", b"\x00", b"\x01", b"\x0b", b"\x1b", b"\x7f"])
async def test_a_control_character_in_a_routed_request_line_gets_400_and_is_never_forwarded(keyed, ctl):
    runtime, pc1, _ = await keyed()
    body = chat_body()
    answer, elapsed = await send(runtime.port, chat_head(len(body), target=b"/v1/chat/completions?a=1%sb=2" % ctl) + body)
    assert status_of(answer) == 400 and error_of(answer)["code"] == "malformed_request"
    assert b"Connection: close" in answer and elapsed < 2
    assert pc1.events == []


@pytest.mark.parametrize("ctl", [b"\t", b"\x01", b"\x7f"])
async def test_a_control_character_in_a_proxied_request_line_gets_400_first_or_later_on_the_connection(keyed, ctl):
    """The front checks the first request line of every connection; aiohttp's parser (and
    the middleware, whichever parser runs) those that follow on a connection it serves."""
    runtime, _, seen = await keyed()
    line = b"GET /sim/echo?a=1%sb=2 HTTP/1.1\r\nHost: lb\r\nAuthorization: Bearer client-key\r\n\r\n" % ctl
    answer, _ = await send(runtime.port, line)
    assert status_of(answer) == 400 and error_of(answer)["code"] == "malformed_request"
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        writer.write(b"GET /sim/echo HTTP/1.1\r\nHost: lb\r\nAuthorization: Bearer client-key\r\n\r\n")
        assert (await read_one(reader))[0] == 200
        writer.write(line)
        later = await asyncio.wait_for(reader.read(), 5)  # then the connection closes
    finally:
        writer.close()
    assert status_of(later) == 400
    assert seen == [("GET", "/sim/echo")]  # only the clean one


# -- 4. keys that are not UTF-8


@pytest.mark.parametrize("header", [b"Authorization: Bearer \xff\xfe\xfd", b"x-api-key: \xc3\x28", b"x-api-key: \xed\xa0\x80"])
async def test_a_key_that_is_not_utf8_gets_401_on_both_fronts_with_no_traceback(keyed, admin_http, header, caplog):
    runtime, pc1, _ = await keyed()
    body = chat_body()
    requests = {
        "aiohttp": b"GET /v1/models HTTP/1.1\r\nHost: lb\r\n%s\r\nConnection: close\r\n\r\n" % header,
        "native": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\n%s\r\nContent-Length: %d\r\n"
                   b"Connection: close\r\n\r\n%s" % (header, len(body), body)),
    }
    with caplog.at_level(logging.WARNING):
        for front, request in requests.items():
            answer, _ = await send(runtime.port, request)
            assert status_of(answer) == 401, front
            assert error_of(answer)["code"] == "invalid_api_key", front
    assert tracebacks(caplog) == []
    assert pc1.events == []
    await assert_nothing_in_flight(admin_http, runtime)


async def test_a_non_ascii_key_sent_as_utf8_opens_both_fronts(keyed):
    """Both fronts compare the key's bytes, however each decoded the header."""
    runtime, _, _ = await keyed()
    key = "clé-ü".encode()
    answer, _ = await send(runtime.port, b"GET /v1/models HTTP/1.1\r\nHost: lb\r\nx-api-key: %s\r\n"
                                         b"Connection: close\r\n\r\n" % key)
    assert status_of(answer) == 200
    body = chat_body()
    answer, _ = await send(runtime.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nAuthorization: Bearer %s\r\n"
                                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (key, len(body), body))
    assert status_of(answer) == 200


# -- 5. Content-Length digits that are not ASCII; nothing escapes a protocol callback


@pytest.mark.parametrize("value", [b"\xb2", "\u00b2".encode(), "\u0663".encode(), b"1\xb2", b"-1", b"1 2"])
async def test_a_content_length_that_is_not_ascii_digits_gets_400_and_a_close(keyed, admin_http, value, caplog):
    runtime, pc1, _ = await keyed()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nAuthorization: Bearer client-key\r\n"
            b"Content-Length: %s\r\n\r\n{}" % value)
    with caplog.at_level(logging.WARNING):
        answer, elapsed = await send(runtime.port, head)
    assert status_of(answer) == 400 and elapsed < 2
    assert tracebacks(caplog) == []
    assert pc1.events == []
    await assert_nothing_in_flight(admin_http, runtime)


async def test_an_unexpected_error_reading_a_request_answers_500_and_one_log_line(keyed, admin_http, monkeypatch, caplog):
    """Whatever goes wrong in data_received must not escape it (asyncio would log a traceback
    and drop the connection with no answer)."""
    runtime, _, _ = await keyed()

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug in the head parser")
    monkeypatch.setattr("llama_balancer.h1.requests.RequestReader.feed", broken)
    body = chat_body()
    with caplog.at_level(logging.WARNING):
        answer, _ = await send(runtime.port, chat_head(len(body)) + body)
    assert status_of(answer) == 500 and error_of(answer)["code"] == "internal_error"
    assert tracebacks(caplog) == []
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "a bug in the head parser" in line.getMessage()
    monkeypatch.undo()  # the snapshot's own request goes through the same parser
    await assert_nothing_in_flight(admin_http, runtime)


async def test_an_unexpected_error_in_aiohttps_handler_callback_answers_500_and_closes(keyed, monkeypatch, caplog):
    runtime, _, _ = await keyed()

    class Broken(web.RequestHandler):  # type: ignore[misc]
        __slots__ = ()  # same layout: the handler of this one connection can become one

        def data_received(self, data: bytes) -> None:
            raise RuntimeError("a bug under aiohttp")

    made = runtime.front.hand_off

    def broken_hand_off() -> Any:
        handler = made()
        handler.__class__ = Broken  # only this balancer's next connection (the sims' are left alone)
        return handler
    monkeypatch.setattr(runtime.front, "hand_off", broken_hand_off)
    with caplog.at_level(logging.WARNING):
        answer, _ = await send(runtime.port, b"GET /llmhealth HTTP/1.1\r\nHost: lb\r\n\r\n")
    assert status_of(answer) == 500
    assert tracebacks(caplog) == []


# -- 6. HTTP/0.9 and empty request lines


@pytest.mark.parametrize("request_bytes", [b"GET /\r\n\r\n", b"GET /\r\n", b"\r\n\r\n", b"GET / HTTP/1.1\nHost: lb\n\n",
                                           b"GET / HTTP/2.0\r\nHost: lb\r\n\r\n"])
async def test_an_http09_or_empty_request_line_gets_400_at_once(keyed, request_bytes):
    runtime, _, _ = await keyed(header_timeout=30)  # at once: not when a deadline runs out
    answer, elapsed = await send(runtime.port, request_bytes)
    assert status_of(answer) in (400, 505) and elapsed < 1.0
    assert b"Connection: close" in answer and error_of(answer)["type"] == "invalid_request_error"


async def test_an_http09_request_after_one_aiohttp_served_gets_400_and_a_close(keyed):
    runtime, _, _ = await keyed(header_timeout=30)
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        writer.write(b"GET /llmhealth HTTP/1.1\r\nHost: lb\r\n\r\n")
        assert (await read_one(reader))[0] == 200
        started = time.monotonic()
        writer.write(b"GET /\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert status_of(answer) == 400 and time.monotonic() - started < 1.0
