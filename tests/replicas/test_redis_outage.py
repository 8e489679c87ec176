"""Redis killed under load: no client sees an error, the degraded mode shows, and the
replicas converge when Redis comes back (empty, as after a crash without persistence)."""
from __future__ import annotations

import asyncio
import time

import aiohttp

from .conftest import shared_config

BODY = {"model": "sim-model", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}


async def _all(group, http, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        snaps = [await r.snapshot(http) for r in group]
        if all(predicate(s["shared_state"]) for s in snaps):
            return
        assert time.monotonic() < deadline, [s["shared_state"] for s in snaps]
        await asyncio.sleep(0.05)


async def test_redis_killed_mid_load_costs_no_request_and_the_replicas_converge(sims, redis_server, replicas, http):
    sim = await sims(name="gpu", slots=4, fast=False, chunk_delay_s=0.003)
    group = replicas(shared_config({"gpu": sim}, redis_server.url, request_max=2, shared={}), 3)
    for replica in group:
        await replica.wait_ready(http)
    results: list[int | str] = []
    stop = asyncio.Event()

    async def client(k: int) -> None:
        i = 0
        while not stop.is_set() and i < 2000:
            i += 1
            try:
                async with http.post(group[(i + k) % 3].url + "/v1/chat/completions", json=BODY) as response:
                    await response.read()
                    results.append(response.status)
            except aiohttp.ClientError as exc:
                results.append(type(exc).__name__)

    load = [asyncio.ensure_future(client(k)) for k in range(6)]
    await asyncio.sleep(1.0)
    before = len(results)
    redis_server.kill()
    await _all(group, http, lambda s: s["mode"] == "degraded", timeout=5)
    metrics = await group[0].metrics(http)
    assert "llama_balancer_shared_state_degraded 1.0" in metrics
    assert "llama_balancer_shared_state_live_replicas 3.0" in metrics
    snap = await group[1].snapshot(http)
    assert snap["backends"][0]["request_max_effective"] == 1  # ceil(2 / 3 live replicas)
    await asyncio.sleep(1.0)
    during = len(results)
    redis_server.start()
    await _all(group, http, lambda s: s["mode"] == "shared", timeout=10)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*load)
    assert len(results) > during > before > 0  # requests flowed in every phase
    assert results.count(200) == len(results), sorted(set(map(str, results)))
    for replica in group:
        log = replica.log()
        assert log.count("shared state degraded") == 1, log[-3000:]
        assert log.count("shared state restored") == 1, log[-3000:]
        assert "llama_balancer_shared_state_degraded 0.0" in await replica.metrics(http)
    # Converged: the new Redis knows every replica, and every lease was given back.
    assert await redis_server.call("ZCARD", "test:replicas") == 3
    deadline = time.monotonic() + 3
    while await redis_server.call("ZCARD", "test:leases:gpu") != 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
