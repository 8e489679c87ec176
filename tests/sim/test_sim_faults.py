"""Faults of the sim, set at start, through RunningSim.set_fault, or through /sim/control."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from llama_balancer.sim import SimConfig, start_sim

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


async def test_refuse_makes_connects_fail_and_clearing_reopens_the_same_port(make_sim):
    sim = await make_sim(fast=True)
    port = sim.port
    await sim.set_fault("refuse")
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.ClientConnectorError):
            await client.get(f"{sim.url}/health")
    await sim.set_fault(None)
    assert sim.port == port
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{port}/health") as resp:
            assert resp.status == 200


async def test_refuse_also_cuts_idle_keep_alive_connections(make_sim, session):
    sim = await make_sim(fast=True)
    async with session.get(f"{sim.url}/health") as resp:
        assert resp.status == 200
    await sim.set_fault("refuse")
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.get(f"{sim.url}/health")


async def test_refuse_via_control_answers_first_then_closes(make_sim, session):
    sim = await make_sim(fast=True)
    async with session.post(f"{sim.url}/sim/control", json={"fault": "refuse"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["fault"] == "refuse"
    await asyncio.sleep(0.05)
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.get(f"{sim.url}/health")
    await sim.set_fault(None)
    async with session.get(f"{sim.url}/health") as resp:
        assert resp.status == 200


async def test_a_sim_started_with_refuse_has_a_port_but_refuses_it():
    sim = await start_sim(SimConfig(fast=True, fault="refuse"))
    try:
        assert sim.port > 0
        async with aiohttp.ClientSession() as client:
            with pytest.raises(aiohttp.ClientConnectorError):
                await client.get(f"{sim.url}/health")
            await sim.set_fault(None)
            async with client.get(f"{sim.url}/health") as resp:
                assert resp.status == 200
    finally:
        await sim.close()


@pytest.mark.parametrize("fault,err_type", [("500", "server_error"),
                                            ("503", "unavailable_error")])
async def test_status_faults_answer_llama_style_errors_on_completions_only(
        make_sim, session, fault, err_type):
    sim = await make_sim(fast=True, fault=fault)
    async with session.post(f"{sim.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == int(fault)
        err = (await resp.json())["error"]
    assert (err["code"], err["type"]) == (int(fault), err_type)
    async with session.get(f"{sim.url}/health") as resp:
        assert resp.status == 200
    assert sim.events[-1]["outcome"] == "fault"
    await sim.set_fault(None)
    async with session.post(f"{sim.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200


async def test_stall_holds_the_answer_until_the_client_gives_up(make_sim, session, eventually):
    sim = await make_sim(fast=True, fault="stall", stall_s=5.0)
    timeout = aiohttp.ClientTimeout(total=0.2)
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(f"{sim.url}/v1/chat/completions", json=CHAT,
                                timeout=timeout) as resp:
            await resp.read()

    async def closed() -> bool:
        return sim.events[-1]["outcome"] is not None

    await eventually(closed, timeout=0.5)
    assert sim.events[-1]["outcome"] == "client_closed"
    assert sim.events[-1]["first_byte"] is None


async def test_stall_ends_after_stall_s_and_then_answers(make_sim, session):
    sim = await make_sim(fast=True, fault="stall", stall_s=0.1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with session.post(f"{sim.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
    assert loop.time() - start >= 0.1


async def test_drop_cuts_a_stream_after_n_events_without_done(make_sim, session):
    sim = await make_sim(fast=True, fault="drop", drop_after_chunks=3)
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(f"{sim.url}/v1/chat/completions",
                                json=CHAT | {"stream": True, "max_tokens": 10}) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                received += chunk
    assert received.count(b"data: ") == 3
    assert b"[DONE]" not in received
    assert sim.events[-1]["outcome"] == "fault"


async def test_drop_cuts_a_non_streaming_body_midway(make_sim, session):
    sim = await make_sim(fast=True, fault="drop")
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(f"{sim.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
            await resp.read()
    assert sim.events[-1]["outcome"] == "fault"
    assert sim.state.any_busy() is False


async def test_faults_can_be_switched_through_control(make_sim, session):
    sim = await make_sim(fast=True)
    async with session.post(f"{sim.url}/sim/control",
                            json={"fault": "503", "stall_s": 2, "chunk_delay_s": 0.01}) as resp:
        settings = await resp.json()
    assert (settings["fault"], settings["stall_s"], settings["chunk_delay_s"]) == ("503", 2.0, 0.01)
    assert sim.config.fault == "503"
    async with session.post(f"{sim.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 503
    async with session.post(f"{sim.url}/sim/control", json={"fault": None}) as resp:
        assert (await resp.json())["fault"] is None
    async with session.post(f"{sim.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200


async def test_control_rejects_unknown_keys_and_bad_values_without_changing_anything(
        make_sim, session):
    sim = await make_sim(fast=True)
    for bad in ({"fault": "explode"}, {"nope": 1}, {"stall_s": -1, "fault": "500"},
                {"llmhealth": "tired"}):
        async with session.post(f"{sim.url}/sim/control", json=bad) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert sim.config.fault is None and sim.config.stall_s == 3600.0


async def test_set_fault_rejects_an_unknown_fault(make_sim):
    sim = await make_sim(fast=True)
    with pytest.raises(ValueError):
        await sim.set_fault("meltdown")
    assert sim.config.fault is None


async def test_refuse_cuts_in_flight_streams_like_a_dead_process(make_sim, session, eventually):
    sim = await make_sim(slots=1, chunk_delay_s=0.05, prompt_tps=1e9)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(f"{sim.url}/v1/chat/completions",
                                json=CHAT | {"stream": True, "max_tokens": 100}) as resp:
            await resp.content.readuntil(b"\n\n")
            await sim.set_fault("refuse")
            await resp.read()

    async def slot_freed() -> bool:
        return not sim.state.any_busy()

    await eventually(slot_freed, timeout=0.2)
    assert sim.events[-1]["outcome"] == "fault"
