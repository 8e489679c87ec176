"""Slots and prompt cache: reuse, slot choice, pinning, waiting, and freeing on disconnect."""

from __future__ import annotations

import asyncio

import pytest

from llama_balancer.sim.slots import SlotPool
from llama_balancer.sim.tokens import chat_tokens, tokenize


def chat(*turns: str) -> list[dict[str, str]]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


async def post_chat(session, sim, messages, **extra):
    body = {"messages": messages, "max_tokens": 2} | extra
    async with session.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        return await resp.json()


async def metric(session, sim, name: str) -> float:
    async with session.get(f"{sim.url}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(f"llamacpp:{name} "):
                return float(line.split()[1])
    raise AssertionError(f"metric {name} missing")


async def busy_slots(session, sim) -> list[int]:
    async with session.get(f"{sim.url}/slots") as resp:
        return [s["id"] for s in await resp.json() if s["is_processing"]]


def test_chat_tokens_of_a_conversation_prefix_the_tokens_with_one_more_turn():
    short = chat("Hi there!", "w0 w1")
    longer = short + [{"role": "user", "content": "And then?"}]
    assert chat_tokens(longer)[: len(chat_tokens(short))] == chat_tokens(short)
    assert tokenize("Hello, world  !") == ["Hello", ",", " ", "world", "  ", "!"]


async def test_repeating_a_chat_reuses_all_but_the_last_prompt_token(make_sim, session):
    sim = await make_sim(fast=True, slots=1)
    first = await post_chat(session, sim, chat("Tell me a story"))
    again = await post_chat(session, sim, chat("Tell me a story"))
    n = first["usage"]["prompt_tokens"]
    assert first["timings"]["cache_n"] == 0
    assert (again["timings"]["cache_n"], again["timings"]["prompt_n"]) == (n - 1, 1)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == n - 1


async def test_adding_a_turn_reuses_the_whole_previous_prompt(make_sim, session):
    sim = await make_sim(fast=True, slots=1)
    first = await post_chat(session, sim, chat("Tell me a story"))
    answer = first["choices"][0]["message"]["content"]
    follow = await post_chat(session, sim, chat("Tell me a story", answer, "Go on"))
    n_first = first["usage"]["prompt_tokens"]
    assert follow["timings"]["cache_n"] == n_first
    assert follow["timings"]["prompt_n"] == follow["usage"]["prompt_tokens"] - n_first


async def test_request_takes_the_slot_with_the_longest_common_prefix(make_sim, session):
    sim = await make_sim(fast=True, slots=2)
    # Long enough that the shared "<|user|>" (5 tokens) is under 10 % of either prompt.
    story = chat("Tell me a long story about dragons and castles. " * 3)
    recipe = chat("Give me a recipe for bread with seeds and honey. " * 3)
    await post_chat(session, sim, story)
    await post_chat(session, sim, recipe)
    story_slot, recipe_slot = sim.events[0]["slot"], sim.events[1]["slot"]
    assert story_slot != recipe_slot, "an unrelated prompt takes the least recently used slot"
    await post_chat(session, sim, recipe + chat("", "Thanks")[1:])
    await post_chat(session, sim, story + chat("", "More")[1:])
    assert sim.events[2]["slot"] == recipe_slot and sim.events[2]["cache_n"] > 0
    assert sim.events[3]["slot"] == story_slot and sim.events[3]["cache_n"] > 0


async def test_id_slot_pins_the_request_to_that_slot(make_sim, session):
    sim = await make_sim(fast=True, slots=3)
    await post_chat(session, sim, chat("first"), id_slot=2)
    await post_chat(session, sim, chat("something else entirely"), id_slot=2)
    await post_chat(session, sim, chat("unpinned and unrelated " * 10), id_slot=-1)
    assert [e["slot"] for e in sim.events] == [2, 2, 0]
    async with session.post(f"{sim.url}/completion",
                            json={"prompt": "native", "id_slot": 1, "n_predict": 1}) as resp:
        assert (await resp.json())["id_slot"] == 1


@pytest.mark.parametrize("kept, restored", [(0, False), (4, True)], ids=["cache-ram-off", "cache-ram-on"])
async def test_a_host_prompt_cache_restores_an_evicted_prompt_into_the_slot(make_sim, session, kept, restored):
    sim = await make_sim(fast=True, slots=1, cache_ram_prompts=kept)
    story = chat("Tell me a long story about dragons and castles. " * 3)
    first = await post_chat(session, sim, story)
    await post_chat(session, sim, chat("Give me a recipe for bread with seeds and honey. " * 3))  # evicts it
    again = await post_chat(session, sim, story, id_slot=0)
    n = first["usage"]["prompt_tokens"]
    # Without a host cache only the shared chat-template start ("<|user|>") is reused.
    assert again["timings"]["cache_n"] == n - 1 if restored else again["timings"]["cache_n"] < 10
    assert [e["slot"] for e in sim.events] == [0, 0, 0]


async def test_cache_prompt_false_evaluates_the_whole_prompt(make_sim, session):
    sim = await make_sim(fast=True, slots=1)
    body = {"prompt": "same prompt every time", "n_predict": 1}
    for cache_prompt, expected in [(True, 0), (False, 0), (True, 6)]:
        async with session.post(f"{sim.url}/completion",
                                json=body | {"cache_prompt": cache_prompt}) as resp:
            assert (await resp.json())["timings"]["cache_n"] == expected


async def test_request_beyond_slots_waits_and_counts_as_deferred(make_sim, session, eventually):
    sim = await make_sim(slots=2, chunk_delay_s=0.02, prompt_tps=1e9)
    tasks = [asyncio.create_task(post_chat(session, sim, chat(f"job {i}"), max_tokens=15))
             for i in range(3)]

    async def one_waits() -> bool:
        return await metric(session, sim, "requests_deferred") == 1

    await eventually(one_waits)
    assert await metric(session, sim, "requests_processing") == 2
    assert sorted(await busy_slots(session, sim)) == [0, 1]
    waiting = [e for e in sim.events if e["slot"] is None]
    assert len(waiting) == 1 and waiting[0]["first_byte"] is None
    await asyncio.gather(*tasks)
    assert await metric(session, sim, "requests_deferred") == 0
    assert await metric(session, sim, "requests_processing") == 0
    assert [e["outcome"] for e in sim.events] == ["completed"] * 3


async def test_slots_report_progress_after_use(make_sim, session):
    sim = await make_sim(fast=True, slots=2)
    await post_chat(session, sim, chat("hello"), max_tokens=3)
    async with session.get(f"{sim.url}/slots") as resp:
        used, fresh = await resp.json()
    assert used["id_task"] == 0 and used["is_processing"] is False
    assert used["n_prompt_tokens"] == 7 and used["n_prompt_tokens_cache"] == 0
    assert used["next_token"][0]["n_decoded"] == 3
    assert fresh == {"id": 1, "n_ctx": 8192, "speculative": False,
                     "is_processing": False, "model": "sim-model"}


async def test_client_disconnect_mid_stream_frees_the_slot_at_once(make_sim, session, eventually):
    sim = await make_sim(slots=1, chunk_delay_s=0.05, prompt_tps=1e9)
    body = {"messages": chat("long answer please"), "max_tokens": 200, "stream": True}
    resp = await session.post(f"{sim.url}/v1/chat/completions", json=body)
    await resp.content.readuntil(b"\n\n")
    await resp.content.readuntil(b"\n\n")
    assert await busy_slots(session, sim) == [0]
    resp.close()

    async def freed() -> bool:
        return await busy_slots(session, sim) == [] and sim.events[0]["outcome"] is not None

    await eventually(freed, timeout=0.2)
    assert sim.events[0]["outcome"] == "client_closed"
    assert sim.events[0]["completion_tokens"] < 10
    await post_chat(session, sim, chat("next"), max_tokens=1)
    assert sim.events[1]["outcome"] == "completed"


async def test_cancelled_waiter_does_not_keep_a_slot():
    pool = SlotPool("m", first_id=0, count=1, n_ctx=100)
    held = await pool.acquire(["a"])
    waiter = asyncio.create_task(pool.acquire(["b"]))
    await asyncio.sleep(0)
    assert pool.deferred_count == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    pool.release(held)
    assert pool.deferred_count == 0 and pool.busy_count == 0
    assert (await pool.acquire(["c"])).id == 0


async def test_waiter_pinned_to_a_busy_slot_lets_later_requests_use_free_ones():
    pool = SlotPool("m", first_id=0, count=2, n_ctx=100)
    slot0 = await pool.acquire(["a"], id_slot=0)
    pinned = asyncio.create_task(pool.acquire(["b"], id_slot=0))
    await asyncio.sleep(0)
    other = await asyncio.wait_for(pool.acquire(["c"]), timeout=0.1)
    assert other.id == 1 and not pinned.done()
    pool.release(slot0)
    assert (await asyncio.wait_for(pinned, timeout=0.1)).id == 0
