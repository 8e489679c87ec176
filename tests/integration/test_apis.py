"""The APIs people send, end to end through the balancer to simulated llama-servers: streamed
tool calls with the ``openai`` SDK, Anthropic messages with the ``anthropic`` SDK, OpenAI
responses, and Ollama's native API (NDJSON relayed line by line, routed by model) on both
fronts (the native one, and aiohttp on a handed-over connection)."""
from __future__ import annotations

import asyncio
import time

import anthropic
import openai
import orjson
import pytest

from tests.conftest import assert_nothing_in_flight, server_entry, wait_until

LLAMA, QWEN = "llama-3.1-8b", "qwen2.5-7b"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string",
                                                                                 "enum": ["celsius", "fahrenheit"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
BRIEF = "Be brief. " * 20  # long enough for cache-aware routing to match it (min_match_chars)


@pytest.fixture
async def cluster(sims, balancer):
    pc1 = await sims(name="PC1", models=[LLAMA])
    pc2 = await sims(name="PC2", models=[QWEN])
    runtime = await balancer({
        "servers": {"PC1": server_entry(pc1, kind="llama.cpp"), "PC2": server_entry(pc2, kind="llama.cpp")},
        "models": {"llama.*": ["PC1"], "qwen.*": ["PC2"]},
    })
    return runtime, pc1, pc2


def recorded(runtime) -> list[dict]:
    """The routed requests the access stats recorded, oldest first."""
    return runtime.context.stats.summary()["recent"][::-1]


# --- OpenAI chat tool calls --------------------------------------------------------------

async def test_streamed_tool_calls_through_the_openai_sdk_arrive_as_one_call_with_whole_arguments(cluster, http):
    runtime, pc1, _ = cluster
    client = openai.AsyncOpenAI(base_url=runtime.url + "/v1", api_key="unused", max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    stream = await client.chat.completions.create(model=LLAMA, messages=ASK, tools=tools, stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += (delta.function.name or "") if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
        finish = choice.finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert orjson.loads(calls[0]["arguments"]) == {"city": "sim", "unit": "celsius"}
    assert pc1.events[-1]["path"] == "/v1/chat/completions"
    whole = await client.chat.completions.create(
        model=LLAMA, tools=tools, messages=ASK + [
            {"role": "assistant", "tool_calls": [{"id": calls[0]["id"], "type": "function", "function": {
                "name": "get_weather", "arguments": calls[0]["arguments"]}}]},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"}])
    assert whole.choices[0].finish_reason == "stop" and whole.choices[0].message.content
    await client.close()
    await assert_nothing_in_flight(http, runtime)


# --- Anthropic messages ------------------------------------------------------------------

async def test_anthropic_sdk_messages_whole_and_streamed_are_routed_by_model_and_counted(cluster, http):
    runtime, _, pc2 = cluster
    client = anthropic.AsyncAnthropic(base_url=runtime.url, api_key="unused", max_retries=0)
    message = await client.messages.create(model=QWEN, max_tokens=5, system=BRIEF, messages=ASK)
    assert message.role == "assistant" and message.stop_reason == "max_tokens"
    assert message.content[0].type == "text" and message.content[0].text == "w0 w1 w2 w3 w4"
    assert message.usage.output_tokens == 5 and message.usage.input_tokens > 0
    async with client.messages.stream(model=QWEN, max_tokens=4, system=BRIEF, messages=ASK) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == ["w0", " w1", " w2", " w3"]
    assert final.usage.output_tokens == 4 and final.usage.cache_read_input_tokens > 0, "the same prompt again"
    assert [e["path"] for e in pc2.events] == ["/v1/messages", "/v1/messages"]
    await client.close()
    await wait_until(lambda: len(recorded(runtime)) == 2)
    whole, streamed = recorded(runtime)
    prompt = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    assert (whole["prompt_tokens"], whole["completion_tokens"]) == (prompt, 5)
    assert (streamed["prompt_tokens"], streamed["completion_tokens"]) == (prompt, 4)
    assert streamed["cached_tokens"] == final.usage.cache_read_input_tokens
    await assert_nothing_in_flight(http, runtime)


async def test_anthropic_sdk_streams_a_tool_use_block(cluster, http):
    runtime, _, _ = cluster
    client = anthropic.AsyncAnthropic(base_url=runtime.url, api_key="unused", max_retries=0)
    tools = [{"name": "get_weather", "description": "The weather", "input_schema": WEATHER}]
    async with client.messages.stream(model=LLAMA, max_tokens=100, messages=ASK, tools=tools) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [use] = final.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "sim", "unit": "celsius"}
    await client.close()
    await assert_nothing_in_flight(http, runtime)


# --- OpenAI responses --------------------------------------------------------------------

async def test_openai_sdk_responses_whole_and_streamed(cluster, http):
    runtime, pc1, _ = cluster
    client = openai.AsyncOpenAI(base_url=runtime.url + "/v1", api_key="unused", max_retries=0)
    response = await client.responses.create(model=LLAMA, input="Hello", instructions=BRIEF,
                                             max_output_tokens=3)
    assert response.output_text == "w0 w1 w2" and response.usage.output_tokens == 3
    stream = await client.responses.create(model=LLAMA, input="Hello", instructions=BRIEF,
                                           max_output_tokens=3, stream=True)
    kinds, deltas, completed = [], [], None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            completed = event.response
    assert deltas == ["w0", " w1", " w2"] and kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert completed is not None and completed.usage.output_tokens == 3
    assert completed.usage.input_tokens_details.cached_tokens > 0
    assert [e["path"] for e in pc1.events] == ["/v1/responses", "/v1/responses"]
    await client.close()
    await wait_until(lambda: len(recorded(runtime)) == 2)
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in recorded(runtime)] == [
        (response.usage.input_tokens, 3), (completed.usage.input_tokens, 3)]
    await assert_nothing_in_flight(http, runtime)


async def test_a_response_is_pinned_to_a_slot_like_a_chat_and_a_message_is_not(cluster, http):
    """llama-server's /v1/responses passes every field on to its chat completion, id_slot too;
    /v1/messages keeps only the fields it converts, so pinning it would be a no-op."""
    runtime, pc1, _ = cluster
    await wait_until(lambda: runtime.context.registry.state("PC1").slots is not None)  # pinning needs them
    turn = [{"role": "user", "content": "Hello there"}]
    for path, body in (("/v1/chat/completions", {"messages": turn, "max_tokens": 2}),
                       ("/v1/responses", {"input": turn, "max_output_tokens": 2}),
                       ("/v1/messages", {"messages": turn, "max_tokens": 2})):
        async with http.post(runtime.url + path, json={"model": LLAMA, **body}) as reply:
            assert reply.status == 200, await reply.text()
    pinned = {e["path"]: "id_slot" in e["body"] for e in pc1.events}
    assert pinned == {"/v1/chat/completions": True, "/v1/responses": True, "/v1/messages": False}
    await assert_nothing_in_flight(http, runtime)


# --- Ollama ------------------------------------------------------------------------------

async def read_ndjson_lines(reader: asyncio.StreamReader) -> tuple[dict[str, str], list[tuple[float, dict]]]:
    """A chunked NDJSON answer read line by line as it arrives: (headers, [(arrival, line)])."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].split(" ")[1] == "200", head
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    out, pending = [], b""
    while True:
        size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).split(b";")[0], 16)
        data = (await reader.readexactly(size + 2))[:size]
        if size == 0:
            assert pending == b""
            return headers, out
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            out.append((time.monotonic(), orjson.loads(line)))


def ollama_request(path: str, body: dict, extra: bytes = b"") -> bytes:
    raw = orjson.dumps(body)
    return (b"POST %s HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (path.encode(), len(raw), extra, raw))


@pytest.mark.parametrize("front", ["native", "aiohttp"])
async def test_ollama_chat_and_generate_stream_ndjson_line_by_line_to_the_server_of_their_model(
        sims, balancer, http, front):
    pc1 = await sims(name="PC1", models=[LLAMA], fast=False, chunk_delay_s=0.08, prompt_tps=1e9)
    pc2 = await sims(name="PC2", models=[QWEN], fast=False, chunk_delay_s=0.08, prompt_tps=1e9)
    runtime = await balancer({
        "servers": {"PC1": server_entry(pc1, kind="llama.cpp"), "PC2": server_entry(pc2, kind="llama.cpp")},
        "models": {"llama.*": ["PC1"], "qwen.*": ["PC2"]},
    })
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        if front == "aiohttp":  # a request the native front does not serve hands the connection over
            writer.write(b"GET /livez HTTP/1.1\r\nHost: lb\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b'"ok"}'), 10)
        for path, model, sim, text_of in (("/api/chat", QWEN, pc2, lambda line: line["message"]["content"]),
                                          ("/api/generate", LLAMA, pc1, lambda line: line["response"])):
            body = {"model": model, "options": {"num_predict": 5}}
            body |= {"messages": ASK} if path == "/api/chat" else {"prompt": "Once upon a time"}
            writer.write(ollama_request(path, body))
            headers, lines = await read_ndjson_lines(reader)
            assert headers["content-type"] == "application/x-ndjson" and headers["x-sim-server"] == sim.config.name
            assert [line["done"] for _, line in lines] == [False] * 5 + [True]
            assert "".join(text_of(line) for _, line in lines) == "w0 w1 w2 w3 w4"
            assert lines[-1][1]["eval_count"] == 5 and lines[-1][1]["model"] == model
            spread = lines[-1][0] - lines[0][0]
            assert spread > 0.2, f"the lines came together ({spread:.3f} s apart): buffered, not relayed"
            assert sim.events[-1]["path"] == path
    finally:
        writer.close()
    await wait_until(lambda: len(recorded(runtime)) == 2)
    for entry in recorded(runtime):
        assert entry["completion_tokens"] == 5 and entry["prompt_tokens"] > 0
        assert entry["ttft_ms"] is not None, "an NDJSON stream is a streamed answer"
    await assert_nothing_in_flight(http, runtime)


async def test_ollama_whole_answers_and_embeddings_are_routed_by_model(cluster, http):
    runtime, pc1, pc2 = cluster
    async with http.post(runtime.url + "/api/chat", json={"model": LLAMA, "messages": ASK, "stream": False,
                                                          "options": {"num_predict": 2}}) as reply:
        assert reply.status == 200 and reply.headers["X-Sim-Server"] == "PC1"
        answer = await reply.json()
    assert answer["message"]["content"] == "w0 w1" and answer["done"] is True
    async with http.post(runtime.url + "/api/embed", json={"model": QWEN, "input": ["a", "b"]}) as reply:
        assert reply.headers["X-Sim-Server"] == "PC2"
        assert len((await reply.json())["embeddings"]) == 2
    async with http.post(runtime.url + "/api/embeddings", json={"model": QWEN, "prompt": "a"}) as reply:
        assert reply.headers["X-Sim-Server"] == "PC2" and len((await reply.json())["embedding"]) == 8
    async with http.post(runtime.url + "/api/chat", json={"messages": ASK}) as reply:
        assert reply.status == 400, "a model is required, as on the OpenAI paths"
        assert (await reply.json())["error"]["code"] == "model_missing"
    assert [e["path"] for e in pc1.events] == ["/api/chat"]
    assert [e["path"] for e in pc2.events] == ["/api/embed", "/api/embeddings"]
    await assert_nothing_in_flight(http, runtime)
