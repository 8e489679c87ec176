"""Cache-aware placement end to end: a conversation returns to the backend (and the slot)
that holds its prefix, and every decision's reason is visible."""
from __future__ import annotations

import asyncio

import pytest

from tests.conftest import backend_of, server_entry, snapshot, wait_until

MODEL = "m"
SYSTEM_A = "You are a meticulous assistant for project Alpha. " * 60  # ~3000 chars
SYSTEM_X = "You translate legal contracts into plain English. " * 60


def chat(system: str, turns: list[str], tokens: int = 4) -> dict:
    messages = [{"role": "system", "content": system}]
    for index, text in enumerate(turns):
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": text})
    return {"model": MODEL, "messages": messages, "max_tokens": tokens, "stream": False}


async def send(http, runtime, body: dict, client_ip: str) -> tuple[str, dict]:
    async with http.post(runtime.url + "/v1/chat/completions", json=body,
                         headers={"X-Forwarded-For": client_ip}) as response:
        assert response.status == 200
        return response.headers["X-Sim-Server"], await response.json()


@pytest.fixture
async def cluster(sims, balancer):
    b1 = await sims(name="B1", models=[MODEL], slots=2, fast=False, prompt_tps=200000, chunk_delay_s=0.02)
    b2 = await sims(name="B2", models=[MODEL], slots=2, fast=False, prompt_tps=200000, chunk_delay_s=0.02)
    runtime = await balancer({
        "servers": {"B1": server_entry(b1, kind="llama.cpp"), "B2": server_entry(b2, kind="llama.cpp")},
        "models": {MODEL: ["B1", "B2"]},
        "balancer": {"trusted_proxies": ["127.0.0.1"]},
    })
    return b1, b2, runtime


async def test_a_follow_up_turn_goes_where_its_prefix_is_cached_and_pins_that_slot(cluster, http):
    b1, b2, runtime = cluster
    # X keeps B1 busy, so conversation A starts on B2 (least loaded).
    x_task = asyncio.create_task(send(http, runtime, chat(SYSTEM_X, ["hi"], tokens=30), "10.0.0.1"))
    await wait_until(lambda: runtime.context.registry.state("B1").total == 1)
    server, first = await send(http, runtime, chat(SYSTEM_A, ["question one"]), "10.0.0.2")
    assert server == "B2"
    await x_task
    reply = first["choices"][0]["message"]["content"]
    # Another client continues conversation A: no sticky binding, only the prefix says B2.
    server, second = await send(http, runtime, chat(SYSTEM_A, ["question one", reply, "question two"]), "10.0.0.3")
    assert server == "B2"
    assert second["timings"]["cache_n"] > 500  # the backend really reused its cache
    recent = runtime.context.stats.summary()["recent"]
    assert [r["reason"] for r in recent[:3]] == ["prefix", "least-loaded", "least-loaded"]
    pinned = b2.events[-1]["body"].get("id_slot")
    assert pinned is not None and pinned == b2.events[-2]["slot"]


async def test_the_sticky_identity_is_one_signal_among_others(cluster, http):
    _, _, runtime = cluster
    await send(http, runtime, chat(SYSTEM_A, ["one"]), "10.0.0.9")
    await send(http, runtime, chat(SYSTEM_X, ["different prompt entirely"]), "10.0.0.9")
    assert runtime.context.stats.summary()["recent"][0]["reason"] == "sticky"


async def test_the_snapshot_shows_the_policy_the_queue_and_what_each_backend_holds(cluster, http):
    _, _, runtime = cluster
    await send(http, runtime, chat(SYSTEM_A, ["one"]), "10.0.0.2")
    snap = await snapshot(http, runtime)
    assert snap["routing"] == {"policy": "cache-aware"}
    assert snap["queue"]["length"] == 0
    assert snap["affinity"] and snap["affinity"][0]["entries"] > 0
    assert snap["decisions"]["by_reason"] == {"least-loaded": 1}
    assert snap["decisions"]["recent"][0]["reason"] == "least-loaded"


async def test_an_overloaded_cache_holder_loses_to_a_free_backend(sims, balancer, http):
    b1 = await sims(name="B1", models=[MODEL], slots=8, fast=False, chunk_delay_s=0.05)
    b2 = await sims(name="B2", models=[MODEL], slots=8)
    # Server-level placement: no slots known (an agent-only backend, as vLLM or Ollama would be).
    runtime = await balancer({
        "servers": {"B1": server_entry(b1, kind="agent"), "B2": server_entry(b2, kind="agent")},
        "models": {MODEL: ["B1", "B2"]},
        "balancer": {"trusted_proxies": ["127.0.0.1"]},
    })
    await send(http, runtime, chat(SYSTEM_A, ["warm up"], tokens=1), "10.0.0.1")
    hogs = []
    for index in range(4):  # every one shares A's prefix, cached on B1
        hogs.append(asyncio.create_task(send(http, runtime, chat(SYSTEM_A, [f"q{index}"], tokens=20), f"10.1.0.{index}")))
        await wait_until(lambda n=index + 2: len(b1.events) + len(b2.events) == n)
    servers = [server for server, _ in await asyncio.gather(*hogs)]
    # B1 takes them while its lead over B2 stays within balance_abs_threshold (2); the
    # fourth would make it 3 ahead: it goes to B2 despite the cache.
    assert servers == ["B1", "B1", "B1", "B2"]


@pytest.fixture
async def one_server(sims, balancer, http):
    """One llama-server with 2 slots whose answers take ~0.2 s (10 chunks 20 ms apart) after
    their prefill (``prompt_tps``: near nothing by default)."""
    async def start(prompt_tps: int = 200000, **routing):
        b1 = await sims(name="B1", models=[MODEL], slots=2, fast=False, prompt_tps=prompt_tps, chunk_delay_s=0.02)
        runtime = await balancer({
            "servers": {"B1": server_entry(b1, kind="llama.cpp")}, "models": {MODEL: ["B1"]},
            "balancer": {"trusted_proxies": ["127.0.0.1"], "routing": routing},
        })
        # Slot 0 learns conversation A's prompt, slot 1 X's; both answers teach the
        # balancer how long a request keeps its slot here.
        await send(http, runtime, chat(SYSTEM_A, ["first"], tokens=10), "10.0.0.1")
        await send(http, runtime, chat(SYSTEM_X, ["first"], tokens=10), "10.0.0.2")
        assert [e["slot"] for e in b1.events] == [0, 1]
        return b1, runtime
    return start


@pytest.mark.parametrize("hold_max_s, slot, reason, waited", [
    (10.0, 0, "prefix", True),
    (0.0, 1, "spare-slot", False),  # the fixed horizon alone: the slot frees too late for it
], ids=["prefill-saved", "fixed-horizon"])
async def test_on_a_slow_prefill_the_hold_lasts_as_long_as_the_prefill_it_saves(one_server, http, hold_max_s, slot,
                                                                                 reason, waited):
    # ~1,000-token prompts at 2,000 tokens/s: ~0.5 s of prefill each, ~0.7 s on a slot, far
    # beyond the fixed 0.1 s; the first two answers' timings teach the balancer the pace.
    b1, runtime = await one_server(prompt_tps=2000, cache_hold_s=0.1, cache_hold_max_s=hold_max_s)
    assert runtime.context.registry.state("B1").pace.prefill_s_per_char is not None
    a_task = asyncio.create_task(send(http, runtime, chat(SYSTEM_A, ["first", "w0", "second"], tokens=10), "10.0.0.1"))
    await wait_until(lambda: runtime.context.registry.state("B1").total == 1)
    # Taking idle slot 1 costs A's prompt (~0.5 s) and loses X's (~0.5 s); slot 0 frees in ~0.7.
    _, answer = await send(http, runtime, chat(SYSTEM_A, ["another user"], tokens=1), "10.0.0.3")
    await a_task
    assert b1.events[-1]["slot"] == slot
    assert (answer["timings"]["cache_n"] > 500) is waited
    recent = next(r for r in runtime.context.stats.summary()["recent"] if r["ip"] == "10.0.0.3")
    assert recent["reason"] == reason and (recent["queue_wait_ms"] > 100) is waited
    assert runtime.context.registry.total_inflight() == 0 and len(runtime.context.queue) == 0
    assert backend_of(await snapshot(http, runtime), "B1")["prefill_ms_per_kchar"] > 0


@pytest.mark.parametrize("routing, slot, reason, waited", [
    ({"cache_hold_s": 0.5}, 0, "prefix", True),
    ({"cache_hold_s": 0.0}, 1, "spare-slot", False),  # holding turned off
    ({"cache_hold_s": 0.5, "queue_max": 0}, 1, "spare-slot", False),  # no room to wait: no 429 for it
], ids=["hold", "no-hold", "queue-full"])
async def test_a_request_waits_briefly_for_the_busy_slot_holding_its_prompt(one_server, http, routing, slot, reason, waited):
    b1, runtime = await one_server(**routing)
    # Conversation A continues on slot 0, which stays busy for ~0.2 s ...
    a_task = asyncio.create_task(send(http, runtime, chat(SYSTEM_A, ["first", "w0", "second"], tokens=10), "10.0.0.1"))
    await wait_until(lambda: runtime.context.registry.state("B1").total == 1)
    # ... when a new conversation with A's system prompt arrives: slot 1 is idle but holds X.
    _, answer = await send(http, runtime, chat(SYSTEM_A, ["another user"], tokens=1), "10.0.0.3")
    await a_task
    last = b1.events[-1]
    assert last["slot"] == slot and last["body"].get("id_slot") == slot
    assert (answer["timings"]["cache_n"] > 500) is waited  # slot 0 held A's system prompt
    recent = next(r for r in runtime.context.stats.summary()["recent"] if r["ip"] == "10.0.0.3")
    assert recent["reason"] == reason
    assert (recent["queue_wait_ms"] > 0) is waited
    assert runtime.context.registry.total_inflight() == 0 and len(runtime.context.queue) == 0
    # what the hold went by shows in the snapshot: ~0.2 s per request on a slot here
    assert 0.1 < backend_of(await snapshot(http, runtime), "B1")["slot_occupancy_s"] < 2
