"""Contract: the simulator answers in a real llama-server's shapes.

The same requests go to a real llama-server (tests/real/conftest.py: the tiny random-weight
model, 2 slots, 4096 tokens each) and to a simulator configured alike, and the answers are
compared by *shape*, not value: status codes, headers that matter to a proxy (Content-Type,
``Server: llama.cpp``, chunked framing, keep-alive), and each JSON body reduced to a type
skeleton (key sets, value types, nesting, the shape of list elements). Streams are compared
event by event after the SSE framing is checked (``data: `` lines, blank-line separated,
``data: [DONE]`` or not), with runs of same-shaped token events counted as one, since the two
servers need not cut text into the same number of tokens.

Where the two disagree the real server is right and the simulator is fixed
(src/llama_balancer/sim/). The only differences allowed are listed here, each with its reason:
``SIM_ONLY_HEADERS`` and ``SIM_SLOT_EXTRAS``.
"""
from __future__ import annotations

import asyncio
import http.client
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from llama_balancer.core.signals import parse_llamacpp_metrics, parse_llamacpp_props, parse_llamacpp_slots
from tests.real.shapes import (assert_no_differences, assert_same_shape, body_differences, named_sse_events,
                               named_stream_shape, shape_differences, skeleton, sse_events, stream_shape)

# The simulator's twin of ``llama_servers("contract")``: one model named as the real alias, two
# slots of the real per-slot context, /llmhealth answering 404 as a plain llama-server does.
SIM_SETTINGS: dict[str, Any] = {"name": "contract", "models": ["tiny"], "slots": 2, "ctx_per_slot": 4096,
                                "llmhealth": "absent"}

# Headers the sim sends and a real llama-server does not.
SIM_ONLY_HEADERS: dict[str, str] = {
    "x-sim-server": "test hook: which sim answered (tests with several sims assert on it)",
    "x-sim-instance": "test hook: which model instance served a completion",
}
# Keys a sim's /slots entry has and a real one does not.
SIM_SLOT_EXTRAS: dict[str, str] = {
    "$[].model": "the sim serves several model instances on one port; the balancer counts slots per "
                 "instance by it (core/signals.py Slot.model, SlotsInfo.for_model). A real llama-server "
                 "serves one model and has no such key, which the balancer handles as 'all slots'.",
}
# Headers whose values must be equal (the others: present on both, any value).
COMPARED_HEADERS = ("content-type", "server", "access-control-allow-origin", "x-accel-buffering",
                    "transfer-encoding", "connection", "keep-alive")
# The llama-server metrics the balancer reads (core/signals.py parse_llamacpp_metrics).
BALANCER_METRICS = ("requests_processing", "requests_deferred", "prompt_tokens_total",
                    "prompt_tokens_cached_total", "tokens_predicted_total", "n_busy_slots_per_decode")

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Say something about the sea."}],
        "max_tokens": 3, "temperature": 0, "ignore_eos": True}
TEXT = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 3, "temperature": 0, "ignore_eos": True}
NATIVE = {"prompt": "Once upon a time", "n_predict": 3, "temperature": 0, "ignore_eos": True}
MESSAGES = {"model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "Say something about the sea."}],
            "temperature": 0, "ignore_eos": True}
RESPONSES = {"model": "tiny", "max_output_tokens": 3, "input": "Say something about the sea.", "temperature": 0,
             "ignore_eos": True}
USAGE = {"stream_options": {"include_usage": True}}
TOO_LONG = "hello " * 4200  # > 4096 tokens for both tokenizers


# --- comparing answers --------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def header_differences(real: Answer, sim: Answer) -> list[str]:
    out = [f"header {name}: missing in the sim" for name in real.headers if name not in sim.headers]
    out += [f"header {name}: only in the sim" for name in sim.headers
            if name not in real.headers and name not in SIM_ONLY_HEADERS]
    out += [f"header {name}: real {real.headers[name]!r}, sim {sim.headers[name]!r}" for name in COMPARED_HEADERS
            if name in real.headers and name in sim.headers and real.headers[name] != sim.headers[name]]
    return out


def assert_same_answer(real: Answer, sim: Answer, allowed: dict[str, str] | None = None) -> None:
    """Same status, the same headers (by name, and by value where it matters), and JSON
    bodies of the same shape."""
    found = [f"status: real {real.status}, sim {sim.status}"] if sim.status != real.status else []
    found += header_differences(real, sim) + body_differences(real.json(), sim.json(), allowed)
    assert_no_differences(found, "answer")
    assert real.headers["server"] == "llama.cpp"


def assert_same_stream(real: Answer, sim: Answer) -> tuple[list[Any], list[Any]]:
    """Same status and headers (chunked, text/event-stream), same framing, and events of the
    same shapes in the same order; returns both servers' events."""
    assert (real.status, sim.status) == (200, 200)
    assert real.headers["transfer-encoding"] == "chunked" and "content-length" not in real.headers
    real_events, sim_events = sse_events(real.body), sse_events(sim.body)
    real_shapes, sim_shapes = stream_shape(real_events), stream_shape(sim_events)
    found = header_differences(real, sim)
    if len(real_shapes) != len(sim_shapes):
        found.append(f"event shapes: real {real_shapes}, sim {sim_shapes}")
    for index, (r, s) in enumerate(zip(real_shapes, sim_shapes)):
        found += shape_differences(r, s, f"event {index}")
    assert_no_differences(found, "stream")
    return real_events, sim_events


def assert_same_named_stream(real: Answer, sim: Answer) -> tuple[list[Any], list[Any]]:
    """``assert_same_stream`` for streams of named SSE events; returns both servers' events."""
    assert (real.status, sim.status) == (200, 200)
    assert real.headers["transfer-encoding"] == "chunked" and "content-length" not in real.headers
    real_events, sim_events = named_sse_events(real.body), named_sse_events(sim.body)
    real_shapes, sim_shapes = named_stream_shape(real_events), named_stream_shape(sim_events)
    found = header_differences(real, sim)
    if [name for name, _ in real_shapes] != [name for name, _ in sim_shapes]:
        found.append(f"events: real {[n for n, _ in real_shapes]}, sim {[n for n, _ in sim_shapes]}")
    for index, ((name, r), (_, s)) in enumerate(zip(real_shapes, sim_shapes)):
        found += shape_differences(r, s, f"event {index} ({name})")
    assert_no_differences(found, "stream")
    return real_events, sim_events


# --- talking to both ----------------------------------------------------------------------

def fresh_connections() -> aiohttp.ClientSession:
    """A client that opens a connection per request: llama-server (cpp-httplib) may close an
    idle keep-alive connection just as the next request goes out on it (CI saw "Server
    disconnected" on the second of two streams); these tests compare shapes, not reuse."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


@dataclass
class Pair:
    real: str
    sim: str
    session: aiohttp.ClientSession

    async def call(self, base: str, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Answer:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        timeout = aiohttp.ClientTimeout(total=60)
        async with self.session.request(method, base + path, data=data, headers=headers, timeout=timeout) as resp:
            payload = await resp.read()
            return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, payload)

    async def both(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[Answer, Answer]:
        """The same request to the real server, then to the sim (one at a time)."""
        real = await self.call(self.real, method, path, body, raw)
        sim = await self.call(self.sim, method, path, body, raw)
        return real, sim


@pytest.fixture
async def pair(llama_servers, sims):
    real = llama_servers("contract")
    sim = await sims(**SIM_SETTINGS)
    async with fresh_connections() as session:
        yield Pair(real.url, sim.url, session)


def slot_groups(slots: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A /slots answer as (never used, used): a used slot shows its last task."""
    return [s for s in slots if "id_task" not in s], [s for s in slots if "id_task" in s]


def metric_lines(text: str) -> dict[str, tuple[str | None, bool, float]]:
    """Prometheus text as name -> (TYPE, has HELP, value); every sample line must parse."""
    kinds: dict[str, str] = {}
    helped: set[str] = set()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line[len("# TYPE "):].split()
            kinds[name] = kind
        elif line.startswith("# HELP "):
            helped.add(line.split()[2])
        elif line.strip():
            name, value = line.split()
            values[name] = float(value)
    return {name: (kinds.get(name), name in helped, value) for name, value in values.items()}


# --- the helpers themselves (no server needed) --------------------------------------------

def test_skeletons_keep_keys_types_and_list_element_shapes_but_not_values():
    value = {"a": 1, "b": [{"x": 1.5}, {"x": 2.5, "y": None}], "c": [], "d": True, "e": "s"}
    assert skeleton(value) == {"a": "int", "b": [{"x": "float", "y": "null"}], "c": [], "d": "bool", "e": "str"}
    found = shape_differences(skeleton({"a": 1, "b": [1]}), skeleton({"a": 2.0, "c": 1, "b": []}))
    assert sorted(found) == sorted(["$.c: only in the sim", "$.a: real 'int', sim 'float'", "$.b: real ['int'], sim []"])


def test_sse_framing_is_checked_and_done_is_kept():
    assert sse_events(b'data: {"a":1}\n\ndata: [DONE]\n\n') == [{"a": 1}, "[DONE]"]
    with pytest.raises(AssertionError):
        sse_events(b'data: {"a":1}\n')
    assert stream_shape([{"t": "x"}, {"t": "y"}, {"t": 1}, "[DONE]"]) == [{"t": "str"}, {"t": "int"}, "[DONE]"]


# --- the read-only endpoints --------------------------------------------------------------

async def test_health_has_the_real_shape(pair):
    for path in ("/health", "/v1/health"):
        real, sim = await pair.both("GET", path)
        assert_same_answer(real, sim)


async def test_fresh_slots_have_the_real_shape(pair):
    real, sim = await pair.both("GET", "/slots")
    assert_same_answer(real, sim, SIM_SLOT_EXTRAS)
    assert all("id_task" not in s for s in real.json() + sim.json()), "no slot has been used yet"
    assert parse_llamacpp_slots(real.body) is not None and parse_llamacpp_slots(sim.body) is not None


async def test_slots_after_use_have_the_real_shape(pair):
    await pair.both("POST", "/v1/chat/completions", CHAT)
    real, sim = await pair.both("GET", "/slots")
    assert_same_answer(real, sim, SIM_SLOT_EXTRAS)
    (real_fresh, real_used), (sim_fresh, sim_used) = slot_groups(real.json()), slot_groups(sim.json())
    assert (len(real_fresh), len(real_used)) == (len(sim_fresh), len(sim_used)) == (1, 1)
    assert_same_shape(real_used, sim_used, SIM_SLOT_EXTRAS, "used slot")
    assert_same_shape(real_fresh, sim_fresh, SIM_SLOT_EXTRAS, "unused slot")
    parsed = parse_llamacpp_slots(real.body), parse_llamacpp_slots(sim.body)
    assert [(p.total, p.busy) for p in parsed if p] == [(2, 0), (2, 0)]


async def test_busy_slots_metrics_and_no_slot_error_have_the_real_shape(llama_servers, sims):
    """Both slots generating: /slots, /metrics and ``/slots?fail_on_no_slot=1`` (503)."""
    real_url = llama_servers("contract").url
    sim = await sims(**SIM_SETTINGS, fast=False, chunk_delay_s=0.01, prompt_tps=1e9)
    long = NATIVE | {"n_predict": 3000, "stream": True}
    async with fresh_connections() as session:
        pair = Pair(real_url, sim.url, session)
        streams = []
        try:
            for base in (real_url, sim.url):
                for _ in range(2):
                    resp = await session.post(base + "/completion", json=long, timeout=aiohttp.ClientTimeout(total=60))
                    streams.append(resp)
                    await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 30)  # generating now
            real, sim_answer = await pair.both("GET", "/slots")
            assert_same_answer(real, sim_answer, SIM_SLOT_EXTRAS)
            for answer in (real, sim_answer):
                assert [s["is_processing"] for s in answer.json()] == [True, True]
                assert [s["next_token"][0]["has_next_token"] for s in answer.json()] == [True, True]
            real, sim_answer = await pair.both("GET", "/slots?fail_on_no_slot=1")
            assert (real.status, sim_answer.status) == (503, 503)
            assert_same_answer(real, sim_answer)
            assert real.json()["error"]["type"] == sim_answer.json()["error"]["type"] == "unavailable_error"
            real, sim_answer = await pair.both("GET", "/metrics")
            assert header_differences(real, sim_answer) == []
            for answer in (real, sim_answer):
                parsed = parse_llamacpp_metrics(answer.body)
                assert parsed is not None and parsed.requests_processing == 2
        finally:
            for resp in streams:
                resp.close()


async def test_metrics_name_the_same_metrics_with_the_same_types(pair):
    await pair.both("POST", "/v1/chat/completions", CHAT)
    real, sim = await pair.both("GET", "/metrics")
    assert (real.status, sim.status) == (200, 200)
    assert header_differences(real, sim) == []
    real_lines, sim_lines = metric_lines(real.body.decode()), metric_lines(sim.body.decode())
    for name in BALANCER_METRICS:
        assert f"llamacpp:{name}" in real_lines, f"llama-server no longer reports {name}"
    assert {n: v[:2] for n, v in sim_lines.items()} == {n: v[:2] for n, v in real_lines.items()}
    assert list(sim_lines) == list(real_lines), "the same order"
    parsed = [parse_llamacpp_metrics(a.body) for a in (real, sim)]
    assert all(p is not None for p in parsed)
    assert [[getattr(p, f) is None for f in ("prompt_tokens_total", "prompt_tokens_cached_total",
                                             "tokens_predicted_total", "n_busy_slots_per_decode")]
            for p in parsed] == [[False] * 4] * 2


async def test_props_have_the_real_shape(pair):
    real, sim = await pair.both("GET", "/props")
    assert_same_answer(real, sim)
    assert parse_llamacpp_props(real.body) == parse_llamacpp_props(sim.body) == 2


async def test_models_have_the_real_shape(pair):
    for path in ("/v1/models", "/models"):
        real, sim = await pair.both("GET", path)
        assert_same_answer(real, sim)
        assert [m["id"] for m in real.json()["data"]] == [m["id"] for m in sim.json()["data"]] == ["tiny"]


async def test_apply_template_has_the_real_shape(pair):
    """What a chat's resume renders its prompt with (core/resume.py): ``{"prompt": str}``."""
    real, sim = await pair.both("POST", "/apply-template", {"messages": CHAT["messages"]})
    assert_same_answer(real, sim)
    for answer in (real, sim):
        assert "Say something about the sea." in answer.json()["prompt"]


# --- completions --------------------------------------------------------------------------

async def test_chat_completion_has_the_real_shape(pair):
    real, sim = await pair.both("POST", "/v1/chat/completions", CHAT)
    assert_same_answer(real, sim)
    assert real.json()["object"] == sim.json()["object"] == "chat.completion"


async def test_streamed_chat_has_the_real_events_with_timings_on_the_finish_chunk(pair):
    real, sim = await pair.both("POST", "/v1/chat/completions", CHAT | {"stream": True})
    real_events, sim_events = assert_same_stream(real, sim)
    for events in (real_events, sim_events):
        assert events[-1] == "[DONE]"
        assert "timings" in events[-2] and events[-2]["choices"][0]["finish_reason"] == "length"
        assert not any("usage" in e for e in events[:-1])


async def test_streamed_chat_with_include_usage_moves_timings_to_the_usage_chunk(pair):
    real, sim = await pair.both("POST", "/v1/chat/completions", CHAT | {"stream": True} | USAGE)
    real_events, sim_events = assert_same_stream(real, sim)
    for events in (real_events, sim_events):
        finish, usage = events[-3], events[-2]
        assert finish["choices"][0]["finish_reason"] == "length" and "timings" not in finish
        assert usage["choices"] == [] and "usage" in usage and "timings" in usage


async def test_text_completion_has_the_real_shape(pair):
    real, sim = await pair.both("POST", "/v1/completions", TEXT)
    assert_same_answer(real, sim)
    assert real.json()["object"] == sim.json()["object"] == "text_completion"


async def test_streamed_text_completion_ends_with_usage_and_timings_either_way(pair):
    """/v1/completions streams carry usage and timings on the finish chunk with or without
    include_usage, and never a separate usage chunk."""
    for extra in ({}, USAGE):
        real, sim = await pair.both("POST", "/v1/completions", TEXT | {"stream": True} | extra)
        real_events, sim_events = assert_same_stream(real, sim)
        for events in (real_events, sim_events):
            assert events[-1] == "[DONE]"
            assert "usage" in events[-2] and "timings" in events[-2] and events[-2]["choices"]


async def test_native_completion_has_the_real_shape(pair):
    real, sim = await pair.both("POST", "/completion", NATIVE)
    assert_same_answer(real, sim)
    for answer in (real, sim):
        body = answer.json()
        assert body["stop"] is True and {"id_slot", "tokens_cached", "tokens_evaluated", "timings"} <= body.keys()


async def test_streamed_native_completion_has_the_real_events_and_no_done(pair):
    real, sim = await pair.both("POST", "/completion", NATIVE | {"stream": True})
    real_events, sim_events = assert_same_stream(real, sim)
    for events in (real_events, sim_events):
        assert "[DONE]" not in events
        assert [e["stop"] for e in events] == [False] * (len(events) - 1) + [True]
        assert "timings" in events[-1]


async def test_anthropic_message_has_the_real_shape(pair):
    real, sim = await pair.both("POST", "/v1/messages", MESSAGES)
    assert_same_answer(real, sim)
    for answer in (real, sim):
        body = answer.json()
        assert body["type"] == "message" and body["content"][0]["type"] == "text"
        assert set(body["usage"]) == {"input_tokens", "output_tokens", "cache_read_input_tokens"}


async def test_streamed_anthropic_message_has_the_real_named_events(pair):
    real, sim = await pair.both("POST", "/v1/messages", MESSAGES | {"stream": True})
    real_events, sim_events = assert_same_named_stream(real, sim)
    for events in (real_events, sim_events):
        names = [name for name, _ in events]
        assert names[:2] == ["message_start", "content_block_start"] and names[-3:] == [
            "content_block_stop", "message_delta", "message_stop"]
        start, delta = events[0][1]["message"]["usage"], events[-2][1]["usage"]
        assert set(start) == {"input_tokens", "output_tokens", "cache_read_input_tokens"} and set(delta) == {
            "output_tokens"}, "the prompt is counted in message_start only"


async def test_response_has_the_real_shape(pair):
    real, sim = await pair.both("POST", "/v1/responses", RESPONSES)
    assert_same_answer(real, sim)
    for answer in (real, sim):
        body = answer.json()
        assert body["object"] == "response" and body["output"][0]["type"] == "message" and "timings" not in body


async def test_streamed_response_has_the_real_named_events_with_timings_on_completed(pair):
    real, sim = await pair.both("POST", "/v1/responses", RESPONSES | {"stream": True})
    real_events, sim_events = assert_same_named_stream(real, sim)
    for events in (real_events, sim_events):
        assert events[0][0] == "response.created" and events[-1][0] == "response.completed"
        assert "timings" in events[-1][1] and "usage" in events[-1][1]["response"]


async def test_id_slot_pins_a_response_but_not_a_message(llama_servers, sims):
    """llama-server's /v1/responses hands every field to its chat completion; /v1/messages keeps
    only the ones it converts, so ``id_slot`` is lost there (the balancer pins only the first;
    the sim ignores it there too: tests/sim/test_sim_apis.py)."""
    real = llama_servers("contract")
    sim = await sims(**SIM_SETTINGS)
    async with fresh_connections() as session:
        pair = Pair(real.url, sim.url, session)
        for path, body in (("/v1/responses", RESPONSES), ("/v1/messages", MESSAGES)):
            before = real.log().count("selected slot by id (1)")
            await pair.both("POST", path, body | {"id_slot": 1})
            assert (real.log().count("selected slot by id (1)") > before) == (path == "/v1/responses"), path
        assert [(e["path"], e["slot"]) for e in sim.events][0] == ("/v1/responses", 1)


# --- errors -------------------------------------------------------------------------------

async def test_a_prompt_longer_than_the_context_is_the_real_400(pair):
    for path, body in (("/completion", {"prompt": TOO_LONG, "n_predict": 1}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": TOO_LONG}], "max_tokens": 1}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": TOO_LONG}], "max_tokens": 1,
                                                 "stream": True})):
        real, sim = await pair.both("POST", path, body)
        assert real.status == 400
        assert_same_answer(real, sim)
        assert real.json()["error"]["type"] == sim.json()["error"]["type"] == "exceed_context_size_error"


async def test_malformed_json_is_the_real_500(pair):
    for path in ("/v1/chat/completions", "/completion"):
        real, sim = await pair.both("POST", path, raw=b'{"messages": [')
        assert real.status == 500
        assert_same_answer(real, sim)
        assert real.json()["error"]["type"] == sim.json()["error"]["type"] == "server_error"


async def test_unknown_paths_wrong_methods_and_llmhealth_are_the_real_404(pair):
    for method, path in (("GET", "/no/such/path"), ("POST", "/no/such/path"), ("GET", "/v1/chat/completions"),
                         ("GET", "/llmhealth")):
        real, sim = await pair.both(method, path, {} if method == "POST" else None)
        assert real.status == 404, (method, path)
        assert_same_answer(real, sim)
        assert real.json() == sim.json(), "the same body, word for word"


# --- the connection -----------------------------------------------------------------------

def _requests_until_close(port: int, limit: int = 150) -> tuple[int, str | None]:
    """GET /health on one keep-alive connection until the server says close; (count, Keep-Alive)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    first_hint = None
    try:
        for count in range(1, limit + 1):
            conn.request("GET", "/health")
            answer = conn.getresponse()
            answer.read()
            first_hint = first_hint or answer.getheader("Keep-Alive")
            if answer.getheader("Connection") == "close":
                return count, first_hint
        return limit, first_hint
    finally:
        conn.close()


def _open_after_idle(port: int, idle_s: float) -> bool:
    """Whether a keep-alive connection still serves a request after ``idle_s`` of silence."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/health")
        conn.getresponse().read()
        time.sleep(idle_s)
        try:
            conn.request("GET", "/health")
            conn.getresponse().read()
            return True
        except (http.client.HTTPException, OSError):
            return False
    finally:
        conn.close()


async def test_keep_alive_ends_after_the_real_request_count_and_idle_time(pair):
    real_port, sim_port = (int(url.rsplit(":", 1)[1]) for url in (pair.real, pair.sim))
    counts = await asyncio.gather(*(asyncio.to_thread(_requests_until_close, p) for p in (real_port, sim_port)))
    assert counts[0] == counts[1] == (100, "timeout=5, max=100"), counts
    short = await asyncio.gather(*(asyncio.to_thread(_open_after_idle, p, 1.0) for p in (real_port, sim_port)))
    assert short == [True, True]
    long = await asyncio.gather(*(asyncio.to_thread(_open_after_idle, p, 6.5) for p in (real_port, sim_port)))
    assert long == [False, False], "both close a connection idle for more than 5 s"
