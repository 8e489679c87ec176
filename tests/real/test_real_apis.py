"""Anthropic messages and OpenAI responses through the balancer to a real llama-server: the
SDKs read its answers, the balancer counts their tokens as llama-server reports them, and a
response is pinned to a slot (llama-server's log says which) while a message is not."""
from __future__ import annotations

import anthropic
import openai

from tests.conftest import assert_nothing_in_flight, wait_until
from tests.real.conftest import seed_entry

MODEL = "tiny"
SYSTEM = " ".join(f"apple{i}" for i in range(120))  # long enough for cache-aware matching


def config(server):
    return {"servers": {server.name: seed_entry(server)}, "models": {MODEL: [server.name]}}


def recorded(runtime) -> list[dict]:
    return runtime.context.stats.summary()["recent"][::-1]


async def test_anthropic_messages_through_the_balancer_are_counted_as_llama_server_reports_them(
        llama_servers, balancer, http):
    server = llama_servers("LS")
    runtime = await balancer(config(server))
    client = anthropic.AsyncAnthropic(base_url=runtime.url, api_key="x", max_retries=0, timeout=60)
    ask = [{"role": "user", "content": "Tell me about apples."}]
    exact = {"temperature": 0, "ignore_eos": True}  # llama-server's /v1/messages passes temperature on only
    whole = await client.messages.create(model=MODEL, max_tokens=4, system=SYSTEM, messages=ask, extra_body=exact)
    assert whole.usage.output_tokens <= 4 and whole.content[0].type == "text"
    async with client.messages.stream(model=MODEL, max_tokens=4, system=SYSTEM, messages=ask,
                                      extra_body=exact) as stream:
        final = await stream.get_final_message()
    assert final.usage.cache_read_input_tokens > 0, "llama-server reused the same prompt"
    await client.close()
    await wait_until(lambda: len(recorded(runtime)) == 2)
    first, second = recorded(runtime)
    assert first["prompt_tokens"] == whole.usage.input_tokens + whole.usage.cache_read_input_tokens
    assert (second["prompt_tokens"], second["cached_tokens"]) == (
        final.usage.input_tokens + final.usage.cache_read_input_tokens, final.usage.cache_read_input_tokens)
    assert second["completion_tokens"] == final.usage.output_tokens
    assert "selected slot by id" not in server.log(), "a message is never pinned (llama-server drops id_slot)"
    await assert_nothing_in_flight(http, runtime)


async def test_openai_responses_through_the_balancer_are_pinned_and_counted(llama_servers, balancer, http):
    server = llama_servers("LS")
    runtime = await balancer(config(server))
    await wait_until(lambda: runtime.context.registry.state("LS").slots is not None, timeout=5.0)
    client = openai.AsyncOpenAI(base_url=runtime.url + "/v1", api_key="x", max_retries=0, timeout=60)
    whole = await client.responses.create(model=MODEL, instructions=SYSTEM, input="Tell me about apples.",
                                          max_output_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    assert whole.output_text and whole.usage.output_tokens == 4
    stream = await client.responses.create(model=MODEL, instructions=SYSTEM, input="Tell me about apples.",
                                           max_output_tokens=4, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
    completed = [event.response async for event in stream if event.type == "response.completed"]
    assert completed and completed[0].usage.output_tokens == 4
    assert completed[0].usage.input_tokens_details.cached_tokens > 0
    await client.close()
    assert server.log().count("selected slot by id") == 2, "both were pinned by the balancer"
    await wait_until(lambda: len(recorded(runtime)) == 2)
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in recorded(runtime)] == [
        (whole.usage.input_tokens, 4), (completed[0].usage.input_tokens, 4)]
    assert recorded(runtime)[1]["cached_tokens"] == completed[0].usage.input_tokens_details.cached_tokens
    await assert_nothing_in_flight(http, runtime)
