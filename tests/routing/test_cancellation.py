"""A client that goes away has its upstream request closed within 100 ms and its slot and
in-flight count freed — queued, waiting for the first token, or mid-answer."""
from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import assert_nothing_in_flight, server_entry, wait_until

MODEL = "m"
LIMIT_S = 0.1


def body(stream: bool, tokens: int = 200) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": tokens, "stream": stream}


async def start(sims, balancer, **sim_kwargs):
    sim = await sims(name="PC1", models=[MODEL], fast=False, **sim_kwargs)
    runtime = await balancer({"servers": {"PC1": server_entry(sim, kind="llama.cpp")}, "models": {MODEL: ["PC1"]}})
    return sim, runtime


async def closed_within_limit(sim, left_at: float) -> None:
    await wait_until(lambda: sim.events and sim.events[-1]["outcome"] == "client_closed", timeout=2)
    assert sim.events[-1]["ended"] - left_at < LIMIT_S


async def test_leaving_while_waiting_for_the_first_token_closes_the_upstream(sims, balancer, http):
    sim, runtime = await start(sims, balancer, fault="stall", stall_s=30)
    task = asyncio.create_task(http.post(runtime.url + "/v1/chat/completions", json=body(True)))
    await wait_until(lambda: len(sim.events) == 1)
    left_at = time.monotonic()
    task.cancel()
    await closed_within_limit(sim, left_at)
    await assert_nothing_in_flight(http, runtime)


@pytest.mark.parametrize("stream", [True, False])
async def test_leaving_mid_answer_closes_the_upstream_and_frees_the_slot(sims, balancer, http, stream):
    sim, runtime = await start(sims, balancer, chunk_delay_s=0.02)
    if stream:
        response = await http.post(runtime.url + "/v1/chat/completions", json=body(stream))
        await response.content.readline()
        leave = response.close
    else:  # the answer comes whole at the end: leave while the backend generates it
        task = asyncio.create_task(http.post(runtime.url + "/v1/chat/completions", json=body(stream)))
        await wait_until(lambda: len(sim.events) == 1)
        await asyncio.sleep(0.1)
        leave = task.cancel
    left_at = time.monotonic()
    leave()
    await closed_within_limit(sim, left_at)
    await assert_nothing_in_flight(http, runtime)

    async def slot_idle() -> bool:
        async with http.get(sim.url + "/slots") as answer:
            return not any(slot["is_processing"] for slot in await answer.json())
    await wait_until(slot_idle, timeout=LIMIT_S * 5)


async def test_leaving_while_queued_never_reaches_a_backend(sims, balancer, http):
    sim = await sims(name="PC1", models=[MODEL], fast=False, chunk_delay_s=0.02)
    runtime = await balancer({"servers": {"PC1": server_entry(sim, **{"request-max": 1})}, "models": {MODEL: ["PC1"]}})
    holder = asyncio.create_task(http.post(runtime.url + "/v1/chat/completions", json=body(False, 30)))
    await wait_until(lambda: runtime.context.registry.total_inflight() == 1)
    queued = asyncio.create_task(http.post(runtime.url + "/v1/chat/completions", json=body(False)))
    await wait_until(lambda: len(runtime.context.queue) == 1)
    left_at = time.monotonic()
    queued.cancel()
    await wait_until(lambda: len(runtime.context.queue) == 0, timeout=1)
    assert time.monotonic() - left_at < LIMIT_S
    (await holder).close()
    assert len(sim.events) == 1
    await assert_nothing_in_flight(http, runtime)
