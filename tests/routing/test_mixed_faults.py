"""Many clients at once against backends that fail in every way the sim knows, some clients
leaving half-way: every request ends (an answer, an OpenAI-style error of ours or the
backend's relayed, or a cut connection once an answer broke), none is an internal error, and afterwards nothing is left in
flight, queued, or half-way on a backend connection."""
from __future__ import annotations

import asyncio
import logging
import random

import aiohttp

from tests.conftest import assert_nothing_in_flight, server_entry

MODEL = "m"
CLIENTS = 40
REQUESTS_EACH = 3


async def one_client(session: aiohttp.ClientSession, url: str, rng: random.Random, seen: list[str]) -> None:
    for _ in range(REQUESTS_EACH):
        stream = rng.random() < 0.6
        body = {"model": MODEL, "stream": stream, "max_tokens": rng.randint(1, 30),
                "messages": [{"role": "user", "content": f"q{rng.randint(0, 5)}"}]}
        leave_after = rng.uniform(0.0, 0.05) if rng.random() < 0.3 else None
        call = asyncio.ensure_future(_call(session, url, body))
        try:
            seen.append(await asyncio.wait_for(asyncio.shield(call), leave_after) if leave_after else await call)
        except asyncio.TimeoutError:
            call.cancel()  # the client goes away mid-request
            seen.append("left")


async def _call(session: aiohttp.ClientSession, url: str, body: dict) -> str:
    try:
        async with session.post(url, json=body) as response:
            data = await response.read()
            if response.status == 200:
                return "ok"
            error = (await response.json(content_type=None))["error"]
            assert {"message", "type", "code"} <= set(error), data
            return f"{response.status}:{error['code']}"
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        return "cut"  # an answer that broke off after it began: the connection is cut, never a short 200


async def test_clients_leaving_and_backends_failing_leave_nothing_behind(sims, balancer, http, caplog):
    caplog.set_level(logging.ERROR, logger="llama_balancer")
    steady = await sims(name="PC1", models=[MODEL], fast=False, chunk_delay_s=0.002, slots=4)
    flaky = await sims(name="PC2", models=[MODEL], fast=False, chunk_delay_s=0.002, slots=4, stall_s=0.05)
    busy = await sims(name="PC3", models=[MODEL], fast=False, chunk_delay_s=0.004, slots=1)
    runtime = await balancer({
        "servers": {name: server_entry(sim, kind="llama.cpp") for name, sim in
                    (("PC1", steady), ("PC2", flaky), ("PC3", busy))},
        "models": {MODEL: ["PC1", "PC2", "PC3"]},
        "balancer": {"upstream_idle_timeout_s": 0.5,
                     "routing": {"queue_timeout_s": 1.0, "queue_max": 20, "circuit_open_s": 0.05}},
    })
    rng = random.Random(1234)

    async def toggle_faults() -> None:
        for fault in ("drop", "503", None, "stall", "500", "drop", None, "refuse", None):
            await flaky.set_fault(fault)
            await asyncio.sleep(0.04)

    seen: list[str] = []
    url = runtime.url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        await asyncio.wait_for(asyncio.gather(
            toggle_faults(), *(one_client(session, url, random.Random(rng.random()), seen) for _ in range(CLIENTS))),
            timeout=30)
    assert len(seen) == CLIENTS * REQUESTS_EACH
    assert "ok" in seen and "left" in seen
    assert not [outcome for outcome in seen if outcome.endswith(":internal_error")], seen
    await assert_nothing_in_flight(http, runtime)
    assert len(runtime.context.queue) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
