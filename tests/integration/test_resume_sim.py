"""Mid-stream resume through the simulator's faults, the ``openai`` SDK as the client: a
stream whose server cuts the connection after some events goes on, from where it broke, on
another server of the model, and the client sees one uninterrupted stream. (The token-exact
proof on real llama-servers is tests/real/test_real_resume.py.)"""
from __future__ import annotations

import asyncio

import openai
import pytest

from tests.conftest import assert_nothing_in_flight, server_entry

MODEL = "m"
TOKENS = 24


@pytest.fixture
async def dropping(sims, balancer):
    """PC1 and PC2 cut every answer after a few events (PC2 later than PC1), PC3 never: a
    stream may break twice and still end on PC3."""
    pc1 = await sims(name="PC1", models=[MODEL], slots=4, fault="drop", drop_after_chunks=3)
    pc2 = await sims(name="PC2", models=[MODEL], slots=4, fault="drop", drop_after_chunks=9)
    pc3 = await sims(name="PC3", models=[MODEL], slots=4)
    runtime = await balancer({
        "servers": {name: server_entry(sim) for name, sim in (("PC1", pc1), ("PC2", pc2), ("PC3", pc3))},
        "models": {MODEL: ["PC1", "PC2", "PC3"]},
    })
    client = openai.AsyncOpenAI(base_url=runtime.url + "/v1", api_key="unused", max_retries=0)
    yield runtime, client, pc3
    await client.close()


def expected_text(n: int = TOKENS) -> str:
    return " ".join(f"w{i}" for i in range(n))


async def read_chat(client: openai.AsyncOpenAI, content: str, **extra) -> dict:
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=TOKENS, stream=True,
        stream_options={"include_usage": True}, **extra)
    seen: dict = {"ids": set(), "created": set(), "roles": 0, "finishes": [], "text": "", "usage": []}
    async for chunk in stream:
        seen["ids"].add(chunk.id)
        seen["created"].add(chunk.created)
        if chunk.usage is not None:
            seen["usage"].append(chunk.usage)
        for choice in chunk.choices:
            seen["roles"] += choice.delta.role is not None
            seen["text"] += choice.delta.content or ""
            if choice.finish_reason is not None:
                seen["finishes"].append(choice.finish_reason)
    return seen


async def resumes(http, runtime) -> float:
    async with http.get(runtime.url + "/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("llama_balancer_resumes_total{") and 'outcome="resumed"' in line)


async def test_chat_streams_cut_by_their_servers_reach_the_sdk_whole(dropping, http):
    runtime, client, pc3 = dropping
    seen = await asyncio.gather(*(read_chat(client, f"conversation {i}") for i in range(12)))
    for one in seen:
        assert one["text"] == expected_text()
        assert (len(one["ids"]), len(one["created"]), one["roles"], one["finishes"]) == (1, 1, 1, ["length"])
        [usage] = one["usage"]
        assert usage.completion_tokens == TOKENS
    # The prompt tokens are the first request's: what the same chat costs on one server.
    direct = openai.AsyncOpenAI(base_url=pc3.url + "/v1", api_key="unused", max_retries=0)
    try:
        whole = await read_chat(direct, "conversation 0")
    finally:
        await direct.close()
    assert whole["text"] == expected_text()
    assert seen[0]["usage"][0].prompt_tokens == whole["usage"][0].prompt_tokens
    assert await resumes(http, runtime) >= 1, "no stream met a dropping server"
    await assert_nothing_in_flight(http, runtime)


async def test_text_streams_cut_by_their_servers_end_once_with_the_whole_text(dropping, http):
    runtime, client, _ = dropping
    texts = []
    for i in range(6):
        stream = await client.completions.create(model=MODEL, prompt=f"Once upon a time {i}", max_tokens=TOKENS,
                                                 stream=True)
        pieces, finishes = [], []
        async for chunk in stream:
            pieces += [choice.text for choice in chunk.choices]
            finishes += [choice.finish_reason for choice in chunk.choices if choice.finish_reason]
        texts.append("".join(pieces))
        assert finishes == ["length"]
    assert texts == [expected_text()] * 6
    assert await resumes(http, runtime) >= 1
    await assert_nothing_in_flight(http, runtime)


async def test_a_stream_that_opts_out_ends_with_an_error_the_sdk_raises(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL], fault="drop", drop_after_chunks=3)
    pc2 = await sims(name="PC2", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(pc1), "PC2": server_entry(pc2)},
                              "models": {MODEL: ["PC1", "PC2"]}})
    client = openai.AsyncOpenAI(base_url=runtime.url + "/v1", api_key="unused", max_retries=0)
    try:
        with pytest.raises(openai.APIError):
            await read_chat(client, "hi", extra_headers={"X-Balancer-Resume": "off"})
    finally:
        await client.close()
    assert [event["outcome"] for event in pc1.state.events.items] == ["fault"]  # it broke on PC1
    assert pc2.state.events.items == []  # and was not continued on PC2
    assert await resumes(http, runtime) == 0
    await assert_nothing_in_flight(http, runtime)
