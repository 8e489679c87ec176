"""request-max holds across replicas: leases in a real Redis, replicas as processes."""
from __future__ import annotations

import asyncio
import time

import aiohttp

from .conftest import max_concurrent, shared_config

BODY = {"model": "sim-model", "max_tokens": 6, "messages": [{"role": "user", "content": "hello"}]}


async def _load(http: aiohttp.ClientSession, urls: list[str], total: int, clients: int,
                body: dict = BODY) -> list[int | str]:
    """``total`` requests from ``clients`` concurrent clients, spread over ``urls`` in turn."""
    results: list[int | str] = []
    counter = iter(range(total))

    async def client(k: int) -> None:
        for i in counter:
            url = urls[(i + k) % len(urls)]
            try:
                async with http.post(url + "/v1/chat/completions", json=body) as response:
                    await response.read()
                    results.append(response.status)
            except aiohttp.ClientError as exc:
                results.append(type(exc).__name__)

    await asyncio.gather(*(client(k) for k in range(clients)))
    return results


async def test_three_replicas_never_send_a_backend_more_than_its_request_max(sims, redis_server, replicas, http):
    sim = await sims(name="gpu", slots=4, fast=False, chunk_delay_s=0.003)
    group = replicas(shared_config({"gpu": sim}, redis_server.url, request_max=2, shared={}), 3)
    for replica in group:
        await replica.wait_ready(http)
    results = await _load(http, [r.url for r in group], total=300, clients=12)
    assert results.count(200) == 300, sorted(set(map(str, results)))
    served = [e for e in sim.events if e["path"] == "/v1/chat/completions"]
    assert len(served) == 300
    assert max_concurrent(served) == 2  # reached, never passed, though 12 clients pushed
    per_replica = [(await r.snapshot(http))["shared_state"]["admissions"] for r in group]
    # Redis decided every admission (none fell back to the degraded share on a timeout).
    assert all(a["granted"] > 0 and a["local"] == 0 and a["errors"] == 0 for a in per_replica), per_replica
    assert await redis_server.call("ZCARD", "test:leases:gpu") == 0  # every lease given back


async def test_without_shared_state_the_same_load_passes_request_max(sims, redis_server, replicas, http):
    """The control for the test above: each replica alone admits the whole limit."""
    sim = await sims(name="gpu", slots=8, fast=False, chunk_delay_s=0.003)
    group = replicas(shared_config({"gpu": sim}, redis_server.url, request_max=2), 3)
    for replica in group:
        await replica.wait_ready(http, mode="off")
    results = await _load(http, [r.url for r in group], total=90, clients=12)
    assert results.count(200) == 90
    assert max_concurrent(sim.events) > 2


async def test_a_replica_killed_with_sigkill_frees_its_places_within_six_seconds(sims, redis_server, replicas, http):
    sim = await sims(name="gpu", slots=4, fast=False, chunk_delay_s=0.1)
    config = shared_config({"gpu": sim}, redis_server.url, request_max=2, shared={})
    del config["balancer"]["shared_state"]["lease_ttl_s"]  # the defaults: 4 s leases renewed every 1 s
    del config["balancer"]["shared_state"]["renew_interval_s"]
    del config["balancer"]["shared_state"]["liveness_ttl_s"]
    doomed, survivor = replicas(config, 2)
    for replica in (doomed, survivor):
        await replica.wait_ready(http)
    long_body = {**BODY, "max_tokens": 400, "stream": True}  # ~40 s each

    async def hold() -> None:
        try:
            async with http.post(doomed.url + "/v1/chat/completions", json=long_body) as response:
                await response.read()
        except aiohttp.ClientError:
            pass  # its replica is killed under it

    holders = [asyncio.ensure_future(hold()) for _ in range(2)]
    deadline = time.monotonic() + 10
    while (await doomed.snapshot(http))["shared_state"]["leases_held"] < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    waiting = asyncio.ensure_future(_load(http, [survivor.url], total=1, clients=1))
    deadline = time.monotonic() + 5
    while (await survivor.snapshot(http))["queue"]["length"] < 1:  # full: it waits for a place
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    killed_at = time.monotonic()
    doomed.kill9()
    assert await asyncio.wait_for(waiting, 15) == [200]
    freed_after = time.monotonic() - killed_at
    print(f"capacity back {freed_after:.2f} s after SIGKILL")
    assert freed_after < 6.0, freed_after
    await asyncio.gather(*holders)


async def test_far_from_the_limit_replicas_admit_from_their_reserve_and_the_limit_still_holds(
        sims, redis_server, replicas, http):
    """request-max 24 over 3 replicas: at rest each keeps 2 places in reserve (24 / (4 x 3)),
    taken without a round trip; under 40 clients the room, and the reserve with it, goes to
    0, and the backend still never sees more than 24 (reserved places count in Redis)."""
    sim = await sims(name="gpu", slots=32, fast=False, chunk_delay_s=0.003)
    group = replicas(shared_config({"gpu": sim}, redis_server.url, request_max=24, shared={}), 3)
    for replica in group:
        await replica.wait_ready(http)
    results = await _load(http, [r.url for r in group], total=200, clients=4)  # light: reserves used
    results += await _load(http, [r.url for r in group], total=400, clients=40)  # pushes past the limit
    assert results.count(200) == 600, sorted(set(map(str, results)))
    served = [e for e in sim.events if e["path"] == "/v1/chat/completions"]
    assert len(served) == 600 and max_concurrent(served) <= 24
    shared = [(await r.snapshot(http))["shared_state"] for r in group]
    admissions = [s["admissions"] for s in shared]
    assert sum(a["reserved"] for a in admissions) > 0, admissions
    assert all(a["local"] == 0 and a["errors"] == 0 for a in admissions), admissions
    # At rest only the reserves are left in Redis: our places, used by no request.
    assert all(s["leases_held"] == 0 for s in shared), shared
    assert await redis_server.call("ZCARD", "test:leases:gpu") == sum(s["leases_spare"] for s in shared)


async def test_a_killed_replicas_reserve_expires_like_its_leases(sims, redis_server, replicas, http):
    sim = await sims(name="gpu", slots=4)
    config = shared_config({"gpu": sim}, redis_server.url, request_max=1000, shared={"lease_reserve": 8})
    [replica] = replicas(config, 1)
    await replica.wait_ready(http)
    results = await _load(http, [replica.url], total=40, clients=1)
    assert results == [200] * 40
    shared = (await replica.snapshot(http))["shared_state"]
    assert shared["admissions"]["reserved"] >= 30, shared  # a round trip for the first few at most
    assert shared["leases_spare"] == 8 and await redis_server.call("ZCARD", "test:leases:gpu") == 8
    replica.kill9()
    deadline = time.monotonic() + 6
    while await redis_server.call("ZCARD", "test:leases:gpu") > 0:  # lease_ttl_s 1 here
        assert time.monotonic() < deadline, "a dead replica's reserve stayed in Redis"
        await asyncio.sleep(0.1)
