"""The other APIs the sim answers: chat tool calls, Anthropic messages, OpenAI responses,
Ollama's chat, generate and embeddings (shapes; tests/real/test_contract.py compares the
messages and responses shapes with a real llama-server's)."""

from __future__ import annotations

import orjson

HELLO = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
ARGUMENTS = {"city": "sim", "days": 1, "unit": "celsius"}


def named_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip("\n").split("\n\n"):
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        payload = orjson.loads(data[len("data: "):])
        assert payload["type"] == event[len("event: "):]
        out.append((payload["type"], payload))
    return out


def ndjson(text: str) -> list[dict]:
    assert text.endswith("\n")
    return [orjson.loads(line) for line in text.splitlines()]


async def post(session, url: str, body: dict) -> tuple[int, dict[str, str], str]:
    async with session.post(url, json=body) as resp:
        return resp.status, dict(resp.headers), await resp.text()


# --- chat tool calls ---------------------------------------------------------------------

async def test_a_streamed_chat_with_tools_streams_the_call_name_first_then_argument_fragments(make_sim, session, sse):
    sim = await make_sim(fast=True)
    body = {"messages": HELLO, "tools": TOOLS, "stream": True, "max_tokens": 100}
    _, _, text = await post(session, f"{sim.url}/v1/chat/completions", body)
    events = sse(text)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0] == {"role": "assistant", "content": None}
    call = deltas[1]["tool_calls"][0]
    assert call["index"] == 0 and call["type"] == "function" and call["id"]
    assert call["function"] == {"name": "get_weather", "arguments": ""}
    fragments = [d["tool_calls"][0] for d in deltas[2:-1]]
    assert len(fragments) > 3 and all(set(f) == {"index", "function"} for f in fragments)
    assert orjson.loads("".join(f["function"]["arguments"] for f in fragments)) == ARGUMENTS
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls" and "timings" in events[-2]


async def test_a_whole_chat_answer_carries_the_tool_call_in_the_message(make_sim, session):
    sim = await make_sim(fast=True)
    _, _, text = await post(session, f"{sim.url}/v1/chat/completions", {"messages": HELLO, "tools": TOOLS})
    answer = orjson.loads(text)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "" and len(message["tool_calls"]) == 1
    call = message["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == ARGUMENTS
    assert answer["usage"]["completion_tokens"] == answer["timings"]["predicted_n"] > 0


async def test_tool_choice_names_the_tool_or_turns_tools_off_and_a_tool_result_gets_text(make_sim, session):
    sim = await make_sim(fast=True, default_max_tokens=3)
    url = f"{sim.url}/v1/chat/completions"
    named = {"type": "function", "function": {"name": "get_time"}}
    _, _, text = await post(session, url, {"messages": HELLO, "tools": TOOLS, "tool_choice": named})
    call = orjson.loads(text)["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_time", "arguments": "{}"}
    _, _, text = await post(session, url, {"messages": HELLO, "tools": TOOLS, "tool_choice": "none"})
    assert orjson.loads(text)["choices"][0]["message"] == {"role": "assistant", "content": "w0 w1 w2"}
    turns = HELLO + [{"role": "assistant", "content": "", "tool_calls": [call | {"id": "c1"}]},
                     {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    _, _, text = await post(session, url, {"messages": turns, "tools": TOOLS})
    choice = orjson.loads(text)["choices"][0]
    assert choice["message"]["content"] == "w0 w1 w2" and choice["finish_reason"] == "stop"


async def test_a_token_limit_cuts_a_tool_call_short_with_finish_reason_length(make_sim, session):
    sim = await make_sim(fast=True)
    _, _, text = await post(session, f"{sim.url}/v1/chat/completions", {"messages": HELLO, "tools": TOOLS,
                                                                        "max_tokens": 3})
    choice = orjson.loads(text)["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"city'


# --- Anthropic messages ------------------------------------------------------------------

async def test_an_anthropic_message_counts_input_without_its_cached_part(make_sim, session):
    sim = await make_sim(fast=True)
    body = {"model": "sim-model", "max_tokens": 4, "system": "Be brief.", "messages": HELLO}
    url = f"{sim.url}/v1/messages"
    status, headers, text = await post(session, url, body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    first = orjson.loads(text)
    assert first["type"] == "message" and first["role"] == "assistant" and first["model"] == "sim-model"
    assert first["content"] == [{"type": "text", "text": "w0 w1 w2 w3"}]
    assert first["stop_reason"] == "max_tokens" and first["stop_sequence"] is None
    assert first["usage"]["cache_read_input_tokens"] == 0 and first["usage"]["output_tokens"] == 4
    turn = body | {"messages": HELLO + [{"role": "assistant", "content": "w0 w1 w2 w3"},
                                        {"role": "user", "content": [{"type": "text", "text": "More"}]}]}
    usage = orjson.loads((await post(session, url, turn))[2])["usage"]
    assert usage["cache_read_input_tokens"] >= first["usage"]["input_tokens"], "the earlier turn is cached"
    assert usage["input_tokens"] < first["usage"]["input_tokens"] + 10, "only the new part is counted"


async def test_a_streamed_anthropic_message_sends_the_named_events_in_order(make_sim, session):
    sim = await make_sim(fast=True)
    body = {"max_tokens": 3, "messages": HELLO, "stream": True}
    status, headers, text = await post(session, f"{sim.url}/v1/messages", body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = named_events(text)
    assert [name for name, _ in events] == ["message_start", "content_block_start"] + ["content_block_delta"] * 3 + [
        "content_block_stop", "message_delta", "message_stop"]
    assert events[0][1]["message"]["usage"]["output_tokens"] == 0
    assert "".join(e["delta"]["text"] for n, e in events if n == "content_block_delta") == "w0 w1 w2"
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens" and events[-2][1]["usage"] == {"output_tokens": 3}


async def test_anthropic_tools_give_a_tool_use_block_and_a_tool_result_gets_text(make_sim, session, ):
    sim = await make_sim(fast=True, default_max_tokens=2)
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]
    url = f"{sim.url}/v1/messages"
    body = {"max_tokens": 100, "messages": HELLO, "tools": tools, "stream": True}
    events = named_events((await post(session, url, body))[2])
    assert events[1][1]["content_block"] == {"type": "tool_use", "id": events[1][1]["content_block"]["id"],
                                             "name": "get_weather", "input": {}}
    partial = "".join(e["delta"]["partial_json"] for n, e in events if n == "content_block_delta")
    assert orjson.loads(partial) == ARGUMENTS and events[-2][1]["delta"]["stop_reason"] == "tool_use"
    whole = orjson.loads((await post(session, url, body | {"stream": False}))[2])
    use = whole["content"][0]
    assert use["type"] == "tool_use" and use["input"] == ARGUMENTS and whole["stop_reason"] == "tool_use"
    turns = HELLO + [{"role": "assistant", "content": [use]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "sunny"}]}]
    answer = orjson.loads((await post(session, url, {"max_tokens": 2, "messages": turns, "tools": tools}))[2])
    assert answer["content"] == [{"type": "text", "text": "w0 w1"}]
    forced = {"max_tokens": 100, "messages": HELLO, "tools": tools, "tool_choice": {"type": "none"}}
    assert orjson.loads((await post(session, url, forced))[2])["content"][0]["type"] == "text"


# --- OpenAI responses --------------------------------------------------------------------

async def test_a_response_has_one_message_item_and_usage_with_cached_tokens(make_sim, session):
    sim = await make_sim(fast=True)
    body = {"model": "sim-model", "input": "Hello", "instructions": "Be brief.", "max_output_tokens": 3}
    answer = orjson.loads((await post(session, f"{sim.url}/v1/responses", body))[2])
    assert answer["object"] == "response" and answer["status"] == "completed"
    [item] = answer["output"]
    assert item["type"] == "message" and item["content"][0]["text"] == "w0 w1 w2"
    assert answer["usage"]["output_tokens"] == 3
    assert answer["usage"]["input_tokens_details"] == {"cached_tokens": 0}


async def test_a_streamed_response_sends_deltas_then_the_completed_response(make_sim, session):
    sim = await make_sim(fast=True)
    body = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}], "max_output_tokens": 2,
            "stream": True}
    events = named_events((await post(session, f"{sim.url}/v1/responses", body))[2])
    assert [n for n, _ in events] == ["response.created", "response.in_progress", "response.output_item.added",
                                      "response.content_part.added", "response.output_text.delta",
                                      "response.output_text.delta", "response.output_text.done",
                                      "response.content_part.done", "response.output_item.done", "response.completed"]
    completed = events[-1][1]
    assert completed["response"]["usage"]["output_tokens"] == 2 and completed["timings"]["predicted_n"] == 2


async def test_a_response_with_tools_calls_a_function_and_its_output_gets_text(make_sim, session):
    sim = await make_sim(fast=True, default_max_tokens=2)
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    url = f"{sim.url}/v1/responses"
    events = named_events((await post(session, url, {"input": "Weather?", "tools": tools, "stream": True}))[2])
    added = events[2][1]["item"]
    assert added["type"] == "function_call" and added["name"] == "get_weather" and added["arguments"] == ""
    deltas = [e["delta"] for n, e in events if n == "response.function_call_arguments.delta"]
    assert orjson.loads("".join(deltas)) == ARGUMENTS
    done = events[-2][1]["item"]
    assert done["status"] == "completed" and orjson.loads(done["arguments"]) == ARGUMENTS
    items = [{"role": "user", "content": "Weather?"}, done,
             {"type": "function_call_output", "call_id": done["call_id"], "output": "sunny"}]
    answer = orjson.loads((await post(session, url, {"input": items, "tools": tools}))[2])
    assert answer["output"][0]["type"] == "message"


# --- Ollama ------------------------------------------------------------------------------

async def test_ollama_chat_streams_ndjson_by_default_and_ends_with_the_counts(make_sim, session):
    sim = await make_sim(fast=True)
    body = {"model": "sim-model", "messages": HELLO, "options": {"num_predict": 3}}
    status, headers, text = await post(session, f"{sim.url}/api/chat", body)
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    assert headers["Transfer-Encoding"] == "chunked"
    lines = ndjson(text)
    assert [line["done"] for line in lines] == [False, False, False, True]
    assert "".join(line["message"]["content"] for line in lines) == "w0 w1 w2"
    assert all(line["model"] == "sim-model" and line["created_at"].endswith("Z") for line in lines)
    last = lines[-1]
    assert last["done_reason"] == "length" and last["eval_count"] == 3 and last["prompt_eval_count"] > 0
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(last[key], int)


async def test_ollama_chat_not_streamed_is_one_object_and_tools_come_whole(make_sim, session):
    sim = await make_sim(fast=True, default_max_tokens=2)
    url = f"{sim.url}/api/chat"
    answer = orjson.loads((await post(session, url, {"model": "m", "messages": HELLO, "stream": False}))[2])
    assert answer["message"] == {"role": "assistant", "content": "w0 w1"} and answer["done"] is True
    assert answer["done_reason"] == "stop"
    lines = ndjson((await post(session, url, {"model": "m", "messages": HELLO, "tools": TOOLS}))[2])
    assert [line["done"] for line in lines] == [False, True]
    assert lines[0]["message"]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": ARGUMENTS}}]


async def test_ollama_generate_streams_responses_and_its_last_line_has_the_context(make_sim, session):
    sim = await make_sim(fast=True)
    body = {"model": "sim-model", "prompt": "Once upon a time", "options": {"num_predict": 2}}
    lines = ndjson((await post(session, f"{sim.url}/api/generate", body))[2])
    assert [line["response"] for line in lines] == ["w0", " w1", ""]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 2 and isinstance(lines[-1]["context"], list)
    whole = orjson.loads((await post(session, f"{sim.url}/api/generate", body | {"stream": False}))[2])
    assert whole["response"] == "w0 w1" and whole["done"] is True


async def test_ollama_embeddings_new_and_old_and_errors_in_ollama_shape(make_sim, session):
    sim = await make_sim(fast=True)
    answer = orjson.loads((await post(session, f"{sim.url}/api/embed", {"model": "m", "input": ["a b", "c"]}))[2])
    assert answer["model"] == "sim-model" and len(answer["embeddings"]) == 2
    assert answer["prompt_eval_count"] == 4
    old = orjson.loads((await post(session, f"{sim.url}/api/embeddings", {"model": "m", "prompt": "a b"}))[2])
    assert old == {"embedding": answer["embeddings"][0]}
    status, _, text = await post(session, f"{sim.url}/api/chat", {"model": "m"})
    assert status == 400 and set(orjson.loads(text)) == {"error"}


async def test_id_slot_pins_chat_and_responses_but_not_messages_or_ollama(make_sim, session):
    sim = await make_sim(fast=True, slots=2)
    for path, body in (("/v1/chat/completions", {"messages": HELLO}), ("/v1/responses", {"input": "Hi"}),
                       ("/v1/messages", {"max_tokens": 2, "messages": HELLO}),
                       ("/api/chat", {"model": "m", "messages": HELLO, "stream": False})):
        for slot in (1, 0):
            status, _, _ = await post(session, sim.url + path, body | {"id_slot": slot})
            assert status == 200
    slots = {}
    for event in sim.events:
        slots.setdefault(event["path"], []).append(event["slot"])
    assert slots["/v1/chat/completions"] == [1, 0] and slots["/v1/responses"] == [1, 0]
    assert slots["/v1/messages"][0] == slots["/v1/messages"][1], "the same prompt, so the slot holding it"
    assert slots["/api/chat"][0] == slots["/api/chat"][1]
