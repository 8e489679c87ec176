"""Queueing when every backend is full, retries before the first byte, passive health."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import assert_nothing_in_flight, backend_of, server_entry, snapshot, wait_until

MODEL = "m"
CHAT = "/v1/chat/completions"


def body(user: str = "u", tokens: int = 2, stream: bool = False) -> dict:
    return {"model": MODEL, "max_tokens": tokens, "stream": stream,
            "messages": [{"role": "system", "content": f"ユーザーの名前は「{user}」"},
                         {"role": "user", "content": "hello"}]}


async def post(http, runtime, data: dict) -> aiohttp.ClientResponse:
    async with http.post(runtime.url + CHAT, json=data) as response:
        await response.read()
        return response


@pytest.fixture
async def one_slot(sims, balancer):
    """One backend that takes one request at a time (request-max 1)."""
    async def start(**routing):
        sim = await sims(name="PC1", models=[MODEL], fast=False, chunk_delay_s=0.05)
        runtime = await balancer({"servers": {"PC1": server_entry(sim, **{"request-max": 1})},
                                  "models": {MODEL: ["PC1"]}, "balancer": {"routing": routing}})
        return sim, runtime
    return start


async def occupy(http, runtime, tokens: int = 10) -> asyncio.Task:
    task = asyncio.create_task(post(http, runtime, body("holder", tokens)))
    await wait_until(lambda: runtime.context.registry.total_inflight() == 1)
    return task


async def test_a_request_waits_in_the_queue_until_capacity_frees(one_slot, http):
    sim, runtime = await one_slot()
    holder = await occupy(http, runtime)
    waiter = asyncio.create_task(post(http, runtime, body("alice")))
    await wait_until(lambda: len(runtime.context.queue) == 1)
    snap = await snapshot(http, runtime)
    assert snap["queue"]["length"] == 1 and snap["queue"]["waiting_by_model"] == {MODEL: 1}
    assert backend_of(snap, "PC1")["queue"] == 1
    async with http.get(runtime.url + "/metrics") as response:
        text = await response.text()
    assert 'llama_balancer_queued_requests_by_server{server="PC1"} 1.0' in text
    assert 'llama_balancer_queued_requests{model="m"} 1.0' in text
    assert (await holder).status == 200
    assert (await waiter).status == 200
    recent = runtime.context.stats.summary()["recent"]
    assert recent[0]["queue_wait_ms"] > 100  # waited for the ~0.5 s holder
    assert len(runtime.context.queue) == 0
    await assert_nothing_in_flight(http, runtime)


async def test_a_full_queue_answers_429_at_once(one_slot, http):
    _, runtime = await one_slot(queue_max=1)
    holder = await occupy(http, runtime)
    waiter = asyncio.create_task(post(http, runtime, body("alice")))
    await wait_until(lambda: len(runtime.context.queue) == 1)
    async with http.post(runtime.url + CHAT, json=body("bob")) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["error"]["code"] == "queue_full"
    await holder
    await waiter


async def test_a_request_whose_deadline_passes_in_the_queue_gets_503_with_retry_after(one_slot, http):
    _, runtime = await one_slot(queue_timeout_s=0.2)
    holder = await occupy(http, runtime, tokens=20)
    async with http.post(runtime.url + CHAT, json=body("alice")) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert (await response.json())["error"]["code"] == "queue_timeout"
    assert len(runtime.context.queue) == 0
    await holder
    await assert_nothing_in_flight(http, runtime)


async def test_the_queue_is_fair_across_identities_and_fifo_within_one(one_slot, http):
    sim, runtime = await one_slot()
    holder = await occupy(http, runtime, tokens=6)
    waiters = []
    for user in ["alice", "alice", "alice", "bob"]:
        waiters.append(asyncio.create_task(post(http, runtime, body(user))))
        await wait_until(lambda n=len(waiters): len(runtime.context.queue) == n)
    await holder
    await asyncio.gather(*waiters)
    served = [e["body"]["messages"][0]["content"].split("「")[1].rstrip("」") for e in sim.events[1:]]
    assert served == ["alice", "bob", "alice", "alice"]


async def test_a_client_leaving_the_queue_frees_its_place_at_once(one_slot, http):
    sim, runtime = await one_slot()
    holder = await occupy(http, runtime, tokens=20)
    waiter = asyncio.create_task(post(http, runtime, body("alice")))
    await wait_until(lambda: len(runtime.context.queue) == 1)
    left = asyncio.get_running_loop().time()
    waiter.cancel()
    await wait_until(lambda: len(runtime.context.queue) == 0, timeout=1)
    assert asyncio.get_running_loop().time() - left < 0.1
    await holder
    assert len(sim.events) == 1  # the one that left never reached the backend
    await assert_nothing_in_flight(http, runtime)


@pytest.fixture
async def pair(sims, balancer):
    async def start(fault: str | None = None, **routing):
        pc1 = await sims(name="PC1", models=[MODEL], fault=fault)
        pc2 = await sims(name="PC2", models=[MODEL])
        runtime = await balancer({"servers": {"PC1": server_entry(pc1), "PC2": server_entry(pc2)},
                                  "models": {MODEL: ["PC1", "PC2"]},
                                  "balancer": {"routing": routing, "health_poll_interval_s": 30}}, settle=False)
        await wait_until(lambda: all(runtime.context.registry.state(n).served for n in ("PC1", "PC2")))
        return pc1, pc2, runtime
    return start


async def test_a_backend_answering_503_is_retried_on_the_next_and_marked_suspect(pair, http):
    pc1, pc2, runtime = await pair(fault="503")
    response = await post(http, runtime, body())
    assert response.status == 200 and response.headers["X-Sim-Server"] == "PC2"
    assert runtime.context.registry.state("PC1").suspect
    entry = runtime.context.stats.summary()["recent"][0]
    assert entry["server"] == "PC2"
    async with http.get(runtime.url + "/metrics") as metrics:
        text = await metrics.text()
    assert 'llama_balancer_retries_total{kind="http_503",server="PC1"} 1.0' in text
    assert 'llama_balancer_failovers_total{from_server="PC1",to_server="PC2"} 1.0' in text
    # Suspect: the next request prefers the healthy backend without trying PC1 again.
    await post(http, runtime, body("other"))
    assert len(pc1.events) == 1
    await assert_nothing_in_flight(http, runtime)


async def test_a_refused_connection_is_retried_on_the_next_backend(pair, http):
    pc1, pc2, runtime = await pair()
    await pc1.set_fault("refuse")
    response = await post(http, runtime, body())
    assert response.status == 200 and response.headers["X-Sim-Server"] == "PC2"


async def test_repeated_failures_open_the_circuit(pair, http):
    pc1, pc2, runtime = await pair(fault="503", circuit_failures=2, circuit_open_s=30)
    for user in ("a", "b"):
        runtime.context.registry.state("PC1").suspect = False  # as if a poll cleared it
        await post(http, runtime, body(user))
    snap = await snapshot(http, runtime)
    assert backend_of(snap, "PC1")["circuit_open"] is True
    assert backend_of(snap, "PC1")["health"] == "invalid"
    await post(http, runtime, body("c"))
    assert len(pc1.events) == 2


async def test_failures_of_a_routes_only_server_make_it_suspect_and_open_its_circuit(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {MODEL: ["PC1"]},
                              "balancer": {"routing": {"circuit_failures": 2, "circuit_open_s": 30},
                                           "health_poll_interval_s": 30}}, settle=False)
    await wait_until(lambda: runtime.context.registry.state("PC1").served)
    await pc1.set_fault("refuse")
    state = runtime.context.registry.state("PC1")
    assert (await post(http, runtime, body("a"))).status == 502  # its last (only) try failed
    assert state.suspect and state.open_until is None
    assert (await post(http, runtime, body("b"))).status == 502
    assert state.open_until is not None  # two in a row: the circuit is open
    await assert_nothing_in_flight(http, runtime)


async def test_with_retries_off_the_backends_error_is_relayed(pair, http):
    pc1, pc2, runtime = await pair(fault="503", max_retries=0)
    response = await post(http, runtime, body())
    assert response.status == 503 and response.headers["X-Sim-Server"] == "PC1"
    assert pc2.events == []


async def test_nothing_is_retried_once_a_byte_reached_the_client(pair, http):
    """Unless it is resumed (tests/integration/test_resume_sim.py): here the client opts out."""
    pc1, pc2, runtime = await pair(fault="drop")
    with pytest.raises(aiohttp.ClientError):
        async with http.post(runtime.url + CHAT, json=body(tokens=20, stream=True),
                             headers={"X-Balancer-Resume": "off"}) as response:
            await response.read()
    assert pc2.events == []
    await assert_nothing_in_flight(http, runtime)
