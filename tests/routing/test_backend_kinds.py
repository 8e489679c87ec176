"""Native backend signals: llama-server's /health /slots /metrics, detection of "auto",
plain OpenAI liveness; polled numbers show in the snapshot."""
from __future__ import annotations

import asyncio

import pytest

from tests.conftest import backend_of, server_entry, snapshot, wait_until

MODEL = "m"


async def start(sims, balancer, kind: str, **sim_kwargs):
    sim = await sims(name="PC1", models=[MODEL], slots=3, **sim_kwargs)
    runtime = await balancer({"servers": {"PC1": server_entry(sim, kind=kind, **{"health-port": 1})},
                              "models": {MODEL: ["PC1"]}})
    return sim, runtime


@pytest.mark.parametrize("kind", ["llama.cpp", "auto"])
async def test_a_llama_server_is_read_from_its_own_endpoints_without_an_agent(sims, balancer, http, kind):
    # health-port 1 answers nothing: only the native endpoints can make this backend healthy.
    _, runtime = await start(sims, balancer, kind)
    backend = backend_of(await snapshot(http, runtime), "PC1")
    assert backend["kind"] == "llama.cpp"
    assert backend["status"] == "idle"
    assert (backend["slots_total"], backend["slots_busy"]) == (3, 0)
    assert backend["polled_running"] == 0 and backend["polled_waiting"] == 0


async def test_work_in_progress_shows_as_busy_slots_and_a_busy_backend(sims, balancer, http):
    _, runtime = await start(sims, balancer, "llama.cpp", fast=False, chunk_delay_s=0.05)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 40, "stream": True}
    async with http.post(runtime.url + "/v1/chat/completions", json=body) as response:
        await response.content.readline()

        async def busy() -> bool:
            backend = backend_of(await snapshot(http, runtime), "PC1")
            return backend["slots_busy"] == 1 and backend["status"] == "busy" and backend["polled_running"] == 1
        await wait_until(busy)
        await response.read()


async def test_a_llama_server_down_is_invalid(sims, balancer, http):
    sim, runtime = await start(sims, balancer, "llama.cpp")
    await sim.set_fault("refuse")
    await wait_until(lambda: runtime.context.registry.state("PC1").status == "invalid")
    assert "/health unreachable" in runtime.context.registry.state("PC1").last["detail"]


async def test_an_openai_kind_backend_is_judged_by_its_model_list(sims, balancer, http):
    sim, runtime = await start(sims, balancer, "openai")
    backend = backend_of(await snapshot(http, runtime), "PC1")
    assert (backend["kind"], backend["status"], backend["slots_total"]) == ("openai", "idle", None)
    await sim.set_fault("refuse")
    await wait_until(lambda: runtime.context.registry.state("PC1").status == "invalid")


async def test_a_backend_that_hangs_does_not_delay_the_polls_of_the_others(sims, balancer):
    async def hang(reader, writer):
        await asyncio.sleep(30)

    silent = await asyncio.start_server(hang, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    good = await sims(name="B1", models=[MODEL])
    runtime = await balancer({
        "servers": {"HANG": {"addr": "http://127.0.0.1", "health-port": silent_port, "model-port": silent_port},
                    "B1": server_entry(good, kind="llama.cpp")},
        "models": {MODEL: ["HANG", "B1"]},
        "balancer": {"health_poll_interval_s": 0.1, "health_read_timeout_s": 5.0},
    }, settle=False)
    await asyncio.sleep(1.0)
    registry = runtime.context.registry
    assert len(registry.state("B1").samples) == 5  # ~10 polls done, the window holds 5
    assert registry.state("B1").status == "idle"
    assert len(registry.state("HANG").samples) == 0  # still waiting on its first answer
    silent.close()
