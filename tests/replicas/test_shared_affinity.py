"""Sticky bindings, prefix/slot affinity, slot pins and circuit state reach every replica,
so a conversation keeps its server and slot whichever replica it reaches (real Redis;
replicas in this process, where their stores can be read directly).

Replicas learn of each other's choices within about a millisecond, not atomically: two
decisions on two replicas inside that window can pick the same idle slot. The workload
here starts conversations 300 ms apart, its requests take ~40 ms and its users wait 50 ms
before the next turn, as LLM traffic does (with 10 ms requests and no pause the shared ratio
varied 0.55-0.78 against 0.78 for one replica; on a starved machine, 0.64; with starts 100 ms
apart it fell to 0.61 once in a whole `./dev test` run on a 2-CPU VM, where two first turns
on two replicas could be decided inside the window and take the same fresh slot)."""
from __future__ import annotations

import asyncio
from typing import Any

from ..conftest import server_entry, wait_until
from .conftest import FAST_SHARED

SYSTEM = "You are a careful assistant. " * 60  # ~1.7 KB: worth a cache hit


def _config(sims: dict[str, Any], redis_url: str | None, **routing: Any) -> dict[str, Any]:
    balancer: dict[str, Any] = {"routing": routing} if routing else {}
    if redis_url is not None:
        balancer["shared_state"] = {"redis_url": redis_url, "key_prefix": "test:", **FAST_SHARED}
    return {"servers": {name: server_entry(sim) for name, sim in sims.items()},
            "models": {"sim-model": list(sims)}, "balancer": balancer}


async def _replicas(balancer, sims, redis_url: str | None, count: int, **routing: Any) -> list[Any]:
    group = [await balancer(_config(sims, redis_url, **routing)) for _ in range(count)]
    if redis_url is not None:
        for runtime in group:
            await wait_until(lambda: runtime.context.shared.link.mode == "shared" and runtime.context.shared.link.live
                             == count, timeout=5)
    return group


async def _conversations(http, group: list[Any], conversations: int, turns: int, spread: bool) -> None:
    """Each conversation's turns in order, the conversations at once; turn t of conversation
    c goes to replica (t + c) % n when ``spread``, else always to the first."""
    async def talk(c: int) -> None:
        await asyncio.sleep(0.3 * c)  # conversations start apart (see the module's doc)
        messages: list[dict[str, str]] = [
            {"role": "system", "content": f"ユーザーの名前は「user{c}」 {SYSTEM} (conversation {c})"}]
        for t in range(turns):
            messages.append({"role": "user", "content": f"turn {t} of conversation {c}: " + "tell me more. " * 20})
            runtime = group[(t + c) % len(group)] if spread else group[0]
            async with http.post(runtime.url + "/v1/chat/completions",
                                 json={"model": "sim-model", "max_tokens": 4, "messages": messages}) as response:
                assert response.status == 200
                answer = await response.json()
            messages.append({"role": "assistant", "content": answer["choices"][0]["message"]["content"]})
            await asyncio.sleep(0.05)  # the user reads the answer (replicas hear of it meanwhile)
    await asyncio.gather(*(talk(c) for c in range(conversations)))


def _hit_ratio(sims: dict[str, Any]) -> float:
    events = [e for sim in sims.values() for e in sim.events if e["prompt_n"] is not None]
    cached = sum(e["cache_n"] or 0 for e in events)
    return cached / (cached + sum(e["prompt_n"] for e in events))


async def _arm(sims, balancer, http, redis_url: str | None, replicas: int, spread: bool) -> float:
    backends = {name: await sims(name=name, slots=2, fast=False, chunk_delay_s=0.01) for name in ("A", "B")}
    group = await _replicas(balancer, backends, redis_url, replicas)
    await _conversations(http, group, conversations=4, turns=6, spread=spread)
    return _hit_ratio(backends)


async def test_conversations_alternating_between_replicas_hit_the_cache_as_with_one(sims, balancer, http,
                                                                                  redis_server):
    """No arm without sharing here: with as many conversations as slots, the backend's own
    choice (the idle slot with the longest common prefix) finds a conversation's slot even
    for a replica that never saw it: three replicas alone measured 0.777 as well, on ba8b516
    and on aaee915 (on b82a817 they had 0.07-0.14; what changed since was not traced). What the
    sharing itself carries is tested below (sticky bindings, slot pins, circuits)."""
    one = await _arm(sims, balancer, http, None, 1, spread=False)
    shared = await _arm(sims, balancer, http, redis_server.url, 3, spread=True)
    print(f"hit ratio: one replica {one:.3f}, three sharing state {shared:.3f}")
    assert one > 0.5
    assert abs(shared - one) <= 0.05, (one, shared)


async def test_a_sticky_binding_made_on_one_replica_is_seen_by_the_others(sims, balancer, http, redis_server):
    backends = {name: await sims(name=name) for name in ("A", "B")}
    first, second = await _replicas(balancer, backends, redis_server.url, 2)
    body = {"model": "sim-model", "messages": [{"role": "system", "content": "ユーザーの名前は「alice」"},
                                               {"role": "user", "content": "hi"}]}
    async with http.post(first.url + "/v1/chat/completions", json=body) as response:
        assert response.status == 200
    bound = first.context.sticky.target("alice", "sim-model")
    assert bound is not None
    await wait_until(lambda: second.context.sticky.target("alice", "sim-model") == bound, timeout=2)
    # A replica started later loads it from Redis.
    late = await balancer(_config(backends, redis_server.url))
    await wait_until(lambda: late.context.sticky.target("alice", "sim-model") == bound, timeout=3)


async def test_a_circuit_opened_on_one_replica_opens_on_the_others(sims, balancer, http, redis_server):
    backends = {name: await sims(name=name) for name in ("A", "B")}
    first, second = await _replicas(balancer, backends, redis_server.url, 2)
    # What a failed attempt records (routed.py); here directly, as polls would otherwise see
    # a dead server first and no request would ever fail on it.
    first.context.registry.record_failure("A", 2, 30.0)
    first.context.registry.record_failure("A", 2, 30.0)  # the second in a row opens the circuit
    assert first.context.registry.state("A").open_until is not None
    await wait_until(lambda: second.context.registry.state("A").open_until is not None, timeout=2)
    state = second.context.registry.state("A")
    assert state.health(second.context.clock.monotonic()) == "invalid"
    assert 25 < state.open_until - second.context.clock.monotonic() <= 30
