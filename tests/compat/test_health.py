"""SPEC Part A, "Health of backends": the /llmhealth poll and the conservative 5-sample window."""
from __future__ import annotations

import pytest

from llama_balancer.io.gpu import NoGpuSampler

from tests.conftest import server_entry, wait_until


def state(runtime, name="PC1"):
    return runtime.context.registry.state(name)


@pytest.fixture
async def watched(sims, balancer):
    pc1 = await sims(name="PC1", models=["m"])
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {"m": ["PC1"]}})
    return pc1, runtime


async def test_an_idle_agent_makes_the_backend_idle(watched):
    _, runtime = watched
    assert state(runtime).status == "idle"
    assert state(runtime).last["status"] == "idle"


@pytest.mark.parametrize("forced, expected", [("busy", "busy"), ("garbage", "busy"), ("error", "invalid")])
async def test_agent_answers_are_judged_busy_or_invalid(watched, forced, expected):
    pc1, runtime = watched
    pc1.config.llmhealth = forced
    await wait_until(lambda: state(runtime).status == expected)


async def test_one_bad_sample_keeps_the_backend_invalid_for_the_whole_window(watched):
    pc1, runtime = watched
    pc1.config.llmhealth = "error"
    await wait_until(lambda: state(runtime).status == "invalid")
    pc1.config.llmhealth = None
    await wait_until(lambda: state(runtime).samples[-1].status == "idle")
    # A good sample has arrived but the window still holds the invalid ones.
    assert state(runtime).status == "invalid"
    await wait_until(lambda: state(runtime).status == "idle")
    assert [s.status for s in state(runtime).samples] == ["idle"] * 5


async def test_a_refused_connection_is_invalid(watched):
    pc1, runtime = watched
    await pc1.set_fault("refuse")
    await wait_until(lambda: state(runtime).status == "invalid")
    assert "unreachable" in state(runtime).last["detail"]


class ScriptedSampler:
    name = "scripted"

    def __init__(self, value: float) -> None:
        self.value = value

    def sample(self) -> float:
        return self.value


async def test_a_balancer_is_the_health_agent_of_another(balancer, sims):
    pc1 = await sims(name="PC1", models=["m"])
    sampler = ScriptedSampler(80.0)
    agent = await balancer({"servers": {"X": server_entry(pc1)}}, gpu_sampler=sampler)
    entry = {"addr": "http://127.0.0.1", "health-port": agent.port, "model-port": pc1.port}
    front = await balancer({"servers": {"GPU1": entry}, "models": {"m": ["GPU1"]}}, gpu_sampler=NoGpuSampler())
    assert state(front, "GPU1").status == "busy"
    assert state(front, "GPU1").last["gpu_util_max5s"] == 80.0
