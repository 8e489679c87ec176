"""Completion endpoints of the sim: shapes of bodies and streams, errors, instance choice."""

from __future__ import annotations

import asyncio
import time

import openai
import orjson

HELLO = [{"role": "user", "content": "Hello, how are you?"}]


async def test_non_streaming_chat_returns_message_usage_and_timings(make_sim, session):
    sim = await make_sim(fast=True)
    body = {"model": "sim-model", "messages": HELLO, "max_tokens": 5}
    async with session.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Server"] == "llama.cpp"
        assert resp.headers["X-Sim-Instance"] == "sim-model"
        data = await resp.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "sim-model"
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "w0 w1 w2 w3 w4"}
    assert choice["finish_reason"] == "length"
    # "<|user|>Hello, how are you?\n": < | user | > Hello , _ how _ are _ you ? \n
    assert data["usage"] == {"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    timings = data["timings"]
    assert (timings["cache_n"], timings["prompt_n"], timings["predicted_n"]) == (0, 15, 5)
    for key in ("prompt_ms", "prompt_per_second", "predicted_ms", "predicted_per_second"):
        assert timings[key] >= 0


async def test_finish_reason_is_stop_when_the_request_sets_no_limit(make_sim, session):
    sim = await make_sim(fast=True, default_max_tokens=3)
    async with session.post(f"{sim.url}/v1/chat/completions", json={"messages": HELLO}) as resp:
        data = await resp.json()
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"]["completion_tokens"] == 3


async def test_max_completion_tokens_wins_over_max_tokens(make_sim, session):
    sim = await make_sim(fast=True)
    body = {"messages": HELLO, "max_tokens": 9, "max_completion_tokens": 2}
    async with session.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
        data = await resp.json()
    assert data["usage"]["completion_tokens"] == 2


async def test_streaming_chat_sends_role_delta_tokens_finish_with_timings_and_done(
        make_sim, session, sse):
    sim = await make_sim(fast=True)
    body = {"messages": HELLO, "max_tokens": 3, "stream": True}
    async with session.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        events = sse(await resp.text())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:4]] == ["w0", " w1", " w2"]
    finish = chunks[4]
    assert finish["choices"][0]["finish_reason"] == "length"
    assert finish["timings"]["predicted_n"] == 3
    assert len(chunks) == 5, "no usage chunk without stream_options.include_usage"
    assert all("usage" not in c for c in chunks)


async def test_streaming_chat_adds_a_usage_chunk_only_with_include_usage(make_sim, session, sse):
    sim = await make_sim(fast=True)
    body = {"messages": HELLO, "max_tokens": 2, "stream": True,
            "stream_options": {"include_usage": True}}
    async with session.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
        events = sse(await resp.text())
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 2
    assert usage_chunk["usage"]["prompt_tokens"] == 15
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    # as on llama-server: the timings move from the finish chunk to the usage chunk
    assert "timings" not in events[-3] and usage_chunk["timings"]["predicted_n"] == 2


async def test_stream_events_reach_the_client_before_generation_ends(make_sim, session):
    sim = await make_sim(chunk_delay_s=0.05, prompt_tps=1e9)
    body = {"messages": HELLO, "max_tokens": 8, "stream": True}
    async with session.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
        first = await resp.content.readuntil(b"\n\n")
        assert b'"role":"assistant"' in first
        assert sim.events[-1]["ended"] is None, "generation still running"
        await resp.read()
    assert sim.events[-1]["outcome"] == "completed"


async def test_generation_time_follows_chunk_delay_and_prompt_rate(make_sim, session):
    sim = await make_sim(chunk_delay_s=0.02, prompt_tps=150.0)
    body = {"messages": HELLO, "max_tokens": 5}
    start = time.monotonic()
    async with session.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
        data = await resp.json()
    elapsed = time.monotonic() - start
    # 15 prompt tokens at 150/s = 0.1 s, 5 tokens 0.02 s apart = 0.1 s
    assert elapsed >= 0.19
    assert data["timings"]["prompt_ms"] >= 95
    assert data["timings"]["predicted_ms"] >= 95


async def test_text_completions_use_the_text_completion_shape(make_sim, session, sse):
    sim = await make_sim(fast=True)
    body = {"prompt": "Once upon a time", "max_tokens": 2}
    async with session.post(f"{sim.url}/v1/completions", json=body) as resp:
        data = await resp.json()
    assert data["object"] == "text_completion"
    assert data["choices"][0]["text"] == "w0 w1"
    assert data["usage"]["prompt_tokens"] == 7
    async with session.post(f"{sim.url}/v1/completions", json=body | {"stream": True}) as resp:
        events = sse(await resp.text())
    assert [e["choices"][0]["text"] for e in events[:2]] == ["w0", " w1"]
    assert events[2]["choices"][0]["finish_reason"] == "length"
    assert "timings" in events[2]
    assert events[3] == "[DONE]"


async def test_text_streams_end_with_usage_and_timings_and_never_a_usage_chunk(make_sim, session, sse):
    """llama-server's /v1/completions stream: the finish chunk carries both, include_usage or not."""
    sim = await make_sim(fast=True)
    for extra in ({}, {"stream_options": {"include_usage": True}}):
        body = {"prompt": "Once upon a time", "max_tokens": 2, "stream": True} | extra
        async with session.post(f"{sim.url}/v1/completions", json=body) as resp:
            events = sse(await resp.text())
        assert len(events) == 4 and events[-1] == "[DONE]"
        finish = events[-2]
        assert finish["choices"][0]["finish_reason"] == "length"
        assert finish["usage"]["completion_tokens"] == 2 and finish["timings"]["predicted_n"] == 2
        assert finish["id"].startswith("chatcmpl-"), "llama-server's prefix, text completions too"


async def test_native_stream_chunks_carry_token_ids_and_the_last_the_settings(make_sim, session, sse):
    sim = await make_sim(fast=True)
    body = {"prompt": "Once upon a time", "n_predict": 2, "stream": True, "ignore_eos": True, "temperature": 0}
    async with session.post(f"{sim.url}/completion", json=body) as resp:
        assert "Cache-Control" not in resp.headers
        events = sse(await resp.text())
    assert [len(e["tokens"]) for e in events] == [1, 1, 0]
    assert all(isinstance(e["tokens"][0], int) and e["id_slot"] == -1 for e in events[:2])
    settings = events[-1]["generation_settings"]
    assert (settings["n_predict"], settings["max_tokens"], settings["stream"]) == (2, 2, True)
    assert (settings["temperature"], settings["ignore_eos"]) == (0.0, True)
    assert [b["token"] for b in settings["logit_bias"]] == [2, 32001]


async def test_native_completion_answers_slot_cache_and_timings(make_sim, session):
    sim = await make_sim(fast=True)
    body = {"prompt": "Once upon a time", "n_predict": 3, "cache_prompt": True}
    async with session.post(f"{sim.url}/completion", json=body) as resp:
        data = await resp.json()
    assert data["content"] == "w0 w1 w2"
    assert data["stop"] is True
    assert data["id_slot"] == 0
    assert data["tokens_evaluated"] == 7
    assert data["tokens_cached"] == 10  # prompt + generated, as llama-server's n_past
    assert data["timings"]["prompt_n"] == 7


async def test_native_completion_streams_content_events_and_a_final_stop_without_done(
        make_sim, session, sse):
    sim = await make_sim(fast=True)
    body = {"prompt": "Once upon a time", "n_predict": 2, "stream": True}
    async with session.post(f"{sim.url}/completion", json=body) as resp:
        text = await resp.text()
    assert "[DONE]" not in text
    events = sse(text)
    assert [(e["content"], e["stop"]) for e in events[:2]] == [("w0", False), (" w1", False)]
    assert events[-1]["stop"] is True
    assert events[-1]["timings"]["predicted_n"] == 2
    assert len(events) == 3


async def test_model_field_picks_the_instance_and_unknown_models_get_the_first(
        make_sim, session):
    sim = await make_sim(fast=True, models=["a", "b"], instances=2)
    for asked, served in [("b-2", "b-2"), ("a", "a"), ("nope", "a"), (None, "a")]:
        body = {"messages": HELLO, "max_tokens": 1} | ({"model": asked} if asked else {})
        async with session.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
            assert resp.headers["X-Sim-Instance"] == served
            assert (await resp.json())["model"] == served
    assert [e["instance"] for e in sim.events] == ["b-2", "a", "a", "a"]
    assert sim.events[0]["slot"] in (6, 7), "b-2 is the 4th instance: slots 6 and 7"


async def test_prompt_over_the_slot_context_is_a_400_exceed_context_size_error(
        make_sim, session):
    sim = await make_sim(fast=True, ctx_per_slot=10)
    async with session.post(f"{sim.url}/v1/chat/completions", json={"messages": HELLO}) as resp:
        assert resp.status == 400
        err = (await resp.json())["error"]
    assert err["type"] == "exceed_context_size_error"
    assert (err["n_prompt_tokens"], err["n_ctx"]) == (15, 10)
    assert err["message"].startswith("request (15 tokens) exceeds the available context size")
    assert sim.events[-1]["outcome"] == "error"


async def test_malformed_json_is_a_500_server_error_like_llama_server(make_sim, session):
    sim = await make_sim(fast=True)
    async with session.post(f"{sim.url}/v1/chat/completions", data=b"{not json",
                            headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 500
        err = (await resp.json())["error"]
    assert (err["code"], err["type"]) == (500, "server_error")


async def test_chat_without_messages_is_a_400_invalid_request(make_sim, session):
    sim = await make_sim(fast=True)
    async with session.post(f"{sim.url}/v1/chat/completions", json={"model": "x"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_embeddings_are_deterministic_and_name_the_instance(make_sim, session):
    sim = await make_sim(fast=True, models=["emb"])
    body = {"model": "emb", "input": ["alpha", "beta"]}
    async with session.post(f"{sim.url}/v1/embeddings", json=body) as resp:
        assert resp.headers["X-Sim-Instance"] == "emb"
        first = await resp.json()
    async with session.post(f"{sim.url}/v1/embeddings", json=body) as resp:
        second = await resp.json()
    assert first["data"] == second["data"]
    assert [d["index"] for d in first["data"]] == [0, 1]
    assert first["data"][0]["embedding"] != first["data"][1]["embedding"]
    assert abs(sum(x * x for x in first["data"][0]["embedding"]) - 1.0) < 1e-9
    assert sim.events[-1]["path"] == "/v1/embeddings"
    assert sim.events[-1]["slot"] is None


async def test_openai_sdk_reads_sim_answers_and_streams(make_sim):
    sim = await make_sim(fast=True)
    client = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="unused")
    try:
        reply = await client.chat.completions.create(
            model="sim-model", messages=HELLO, max_tokens=2)
        assert reply.choices[0].message.content == "w0 w1"
        stream = await client.chat.completions.create(
            model="sim-model", messages=HELLO, max_tokens=2, stream=True,
            stream_options={"include_usage": True})
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        assert "".join(pieces) == "w0 w1"
        assert usage is not None and usage.prompt_tokens_details.cached_tokens == 14
    finally:
        await client.close()


async def test_concurrent_requests_on_free_slots_run_in_parallel(make_sim, session):
    sim = await make_sim(slots=3, chunk_delay_s=0.05, prompt_tps=1e9)

    async def one(i: int) -> None:
        body = {"messages": [{"role": "user", "content": f"topic {i} " * 20}], "max_tokens": 4}
        async with session.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            await resp.read()

    start = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(3)))
    assert time.monotonic() - start < 0.35, "three slots: no request waited for another"
    assert sorted(e["slot"] for e in sim.events) == [0, 1, 2]


async def test_non_object_body_and_wrong_method_get_llama_style_errors(make_sim, session):
    sim = await make_sim(fast=True)
    async with session.post(f"{sim.url}/v1/chat/completions", data=b"[1, 2]") as resp:
        assert resp.status == 500
        assert orjson.loads(await resp.read())["error"]["type"] == "server_error"
    async with session.get(f"{sim.url}/v1/chat/completions") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["type"] == "not_found_error"


async def test_a_prompt_ending_in_a_partial_answer_is_continued_where_it_stops(make_sim, session):
    """What a resumed stream relies on (core/resume.py): the chat's prompt from /apply-template
    plus the first k pieces of its answer, as a text completion, goes on with piece k, and the
    pieces count as one prompt token each, as a real model's own output re-tokenizes."""
    sim = await make_sim(fast=True)
    async with session.post(f"{sim.url}/v1/chat/completions", json={"messages": HELLO, "max_tokens": 8}) as resp:
        whole = await resp.json()
    answer, prompt_n = whole["choices"][0]["message"]["content"], whole["usage"]["prompt_tokens"]
    async with session.post(f"{sim.url}/apply-template", json={"messages": HELLO}) as resp:
        template = (await resp.json())["prompt"]
    assert template == "<|user|>Hello, how are you?\n"
    pieces = answer.replace(" ", "\0 ").split("\0")
    assert len(pieces) == 8
    for cut in range(1, 8):
        body = {"prompt": template + "".join(pieces[:cut]), "max_tokens": 8 - cut}
        async with session.post(f"{sim.url}/v1/completions", json=body) as resp:
            rest = await resp.json()
        assert "".join(pieces[:cut]) + rest["choices"][0]["text"] == answer
        assert rest["usage"]["prompt_tokens"] == prompt_n + cut


async def test_apply_template_refuses_a_body_without_messages(make_sim, session):
    sim = await make_sim(fast=True)
    async with session.post(f"{sim.url}/apply-template", json={"prompt": "x"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    async with session.post(f"{sim.url}/apply-template", data=b"{nope") as resp:
        assert resp.status == 500
