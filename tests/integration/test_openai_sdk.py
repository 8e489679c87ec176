"""The official ``openai`` SDK as the client: chat (streamed and not), completions, models."""
from __future__ import annotations

import openai
import pytest

from tests.conftest import assert_nothing_in_flight, server_entry

MODEL = "llama-3.1-8b"


@pytest.fixture
async def cluster(sims, balancer):
    pc1 = await sims(name="PC1", models=[MODEL], instances=2)
    pc2 = await sims(name="PC2", models=[MODEL, "qwen2.5-7b"])
    runtime = await balancer({
        "servers": {"PC1": server_entry(pc1), "PC2": server_entry(pc2)},
        "models": {"llama.*": ["PC1", "PC2"], "qwen.*": ["PC2"]},
    })
    client = openai.AsyncOpenAI(base_url=runtime.url + "/v1", api_key="unused", max_retries=0)
    yield runtime, client
    await client.close()


async def test_chat_completion_through_the_sdk_has_content_and_usage(cluster, http):
    runtime, client = cluster
    answer = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=5)
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.usage.completion_tokens == 5
    assert answer.usage.prompt_tokens > 0
    await assert_nothing_in_flight(http, runtime)


async def test_streamed_chat_through_the_sdk_yields_every_token_and_usage(cluster, http):
    runtime, client = cluster
    stream = await client.chat.completions.create(
        model="qwen2.5-7b", messages=[{"role": "user", "content": "Count"}], max_tokens=7, stream=True,
        stream_options={"include_usage": True})
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) == 7
    assert usage is not None and usage.completion_tokens == 7
    await assert_nothing_in_flight(http, runtime)


async def test_text_completion_through_the_sdk_is_routed_by_model(cluster, http):
    runtime, client = cluster
    answer = await client.completions.create(model="qwen2.5-7b", prompt="Once upon a time", max_tokens=3)
    assert answer.choices[0].text
    assert answer.model == "qwen2.5-7b"
    assert runtime.context.stats.summary()["by_server"] == {"PC2": 1}
    await assert_nothing_in_flight(http, runtime)


async def test_streamed_text_completion_through_the_sdk(cluster, http):
    runtime, client = cluster
    stream = await client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, stream=True)
    texts = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert len([t for t in texts if t]) == 4
    await assert_nothing_in_flight(http, runtime)


async def test_model_listing_is_the_union_without_instance_variants(cluster):
    _, client = cluster
    page = await client.models.list()
    assert [model.id for model in page.data] == [MODEL, "qwen2.5-7b"]


async def test_sdk_sees_an_openai_style_error_for_a_missing_model(cluster):
    _, client = cluster
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 400
    assert caught.value.body["code"] == "model_missing"
