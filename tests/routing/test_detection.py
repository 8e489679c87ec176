"""A server without ``kind`` is detected: llama-server on the model port (cache-aware with
slot pinning), an /llmhealth agent on the health port where one answers, both signals used
together, and one log line per server at start and on every change."""
from __future__ import annotations

import asyncio
import logging
import socket

from llama_balancer.io.gpu import NoGpuSampler

from tests.conftest import backend_of, snapshot, wait_until

MODEL = "m"
POLLERS = "llama_balancer.pollers"


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed_entry(model_port: int, health_port: int | None = None) -> dict:
    """The old tool's format: no ``kind``."""
    return {"addr": "http://127.0.0.1", "health-port": health_port or model_port, "model-port": model_port}


def chat(content: str = "hello") -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2}


async def test_a_plain_llama_server_in_a_seed_config_is_detected_and_its_slot_pinned(sims, balancer, http, caplog):
    # llmhealth "absent": a 404 on /llmhealth, as a real llama-server answers; health = model port.
    sim = await sims(name="PC1", models=[MODEL], slots=2, llmhealth="absent")
    caplog.set_level(logging.INFO, logger=POLLERS)
    runtime = await balancer({"servers": {"PC1": seed_entry(sim.port)}, "models": {MODEL: ["PC1"]}})
    backend = backend_of(await snapshot(http, runtime), "PC1")
    assert (backend["kind"], backend["configured_kind"], backend["agent"]) == ("llama.cpp", "auto", False)
    assert (backend["status"], backend["slots_total"]) == ("idle", 2)
    async with http.post(runtime.url + "/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
    assert sim.events[-1]["body"]["id_slot"] in (0, 1)  # pinned: cache-aware routing is on
    await wait_until(lambda: any("PC1 http" in r.message for r in caplog.records))
    lines = [r.message for r in caplog.records if r.message.startswith("PC1 ")]
    assert lines == [f"PC1 {sim.url} llama.cpp, 2 slots, models [{MODEL}]"]
    # health-port = model-port says "no agent": nothing to warn about.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_an_agent_on_the_health_port_and_a_llama_server_on_the_model_port_are_both_read(sims, balancer, http):
    sim = await sims(name="PC1", models=[MODEL], slots=2, llmhealth="absent")
    agent = await balancer({"servers": {"X": seed_entry(sim.port)}}, gpu_sampler=ScriptedSampler(80.0))
    front = await balancer({"servers": {"GPU1": seed_entry(sim.port, agent.port)}, "models": {MODEL: ["GPU1"]}},
                           gpu_sampler=NoGpuSampler())
    backend = backend_of(await snapshot(http, front), "GPU1")
    # The model server's slots and kind, the agent's GPU load: 80 % is busy though no slot works.
    assert (backend["kind"], backend["agent"], backend["slots_total"]) == ("llama.cpp", True, 2)
    assert backend["status"] == "busy" and backend["last"]["gpu_util_max5s"] == 80.0
    await agent.stop()
    # An agent that answered once and then went away counts, as in the old tool.
    await wait_until(lambda: front.context.registry.state("GPU1").status == "invalid")
    assert "agent" in front.context.registry.state("GPU1").last["detail"]


async def test_a_missing_agent_on_its_own_port_is_warned_about_once_and_routing_goes_on(sims, balancer, http, caplog):
    sim = await sims(name="PC1", models=[MODEL], llmhealth="absent")
    caplog.set_level(logging.INFO, logger=POLLERS)
    dead = free_port()
    runtime = await balancer({"servers": {"PC1": seed_entry(sim.port, dead)}, "models": {MODEL: ["PC1"]}})
    assert runtime.context.registry.state("PC1").status == "idle"
    async with http.post(runtime.url + "/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"127.0.0.1:{dead}" in warnings[0] and "own signals" in warnings[0]


async def test_a_configured_agent_that_never_answers_gets_a_warning_with_the_reason_and_a_hint(
        sims, balancer, caplog):
    sim = await sims(name="PC1", models=[MODEL], llmhealth="absent")
    caplog.set_level(logging.INFO, logger=POLLERS)
    runtime = await balancer({"servers": {"PC1": {**seed_entry(sim.port), "kind": "agent"}},
                              "models": {MODEL: ["PC1"]}})
    assert runtime.context.registry.state("PC1").status == "invalid"  # the old tool's protocol, as asked
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "HTTP 404" in warnings[0] and 'remove "kind"' in warnings[0] and "plain llama-server" in warnings[0]


async def test_an_agent_that_appears_later_is_logged_as_a_change(sims, balancer, caplog):
    sim = await sims(name="PC1", models=[MODEL], slots=2, llmhealth="absent")
    caplog.set_level(logging.INFO, logger=POLLERS)
    port = free_port()
    runtime = await balancer({"servers": {"PC1": seed_entry(sim.port, port)}, "models": {MODEL: ["PC1"]}})
    await wait_until(lambda: any(r.message.startswith("PC1 ") for r in caplog.records))

    async def answer_idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"status": "idle", "gpu_util_max5s": 3.0, "window_seconds": 5}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    agent = await asyncio.start_server(answer_idle, "127.0.0.1", port)
    try:
        await wait_until(lambda: runtime.context.registry.state("PC1").discovery.agent_seen)
        # the detection lines (a poll timing out on a loaded machine logs "PC1 is down ..." too)
        lines = [r.message for r in caplog.records if r.message.startswith(f"PC1 {sim.url} ")]
        assert lines == [f"PC1 {sim.url} llama.cpp, 2 slots, models [{MODEL}]",
                         f"PC1 {sim.url} llama.cpp, 2 slots, models [{MODEL}], agent on :{port}"]
        await wait_until(lambda: runtime.context.registry.state("PC1").last["gpu_util_max5s"] == 3.0)
    finally:
        agent.close()


class ScriptedSampler:
    name = "scripted"

    def __init__(self, value: float) -> None:
        self.value = value

    def sample(self) -> float:
        return self.value


async def test_a_failing_llmhealth_that_turns_404_is_no_agent_for_good(sims, balancer, http):
    """A restarted llama-server answers 503 on every path while it loads, /llmhealth too; once
    loaded its /llmhealth is a 404. The 5xx makes it invalid (the old tool's reading) but must
    not make it an agent's address: when the 404 comes, its own signals place on it again."""
    sim = await sims(name="PC1", models=[MODEL], slots=2, llmhealth="error")
    runtime = await balancer({"servers": {"PC1": seed_entry(sim.port)}, "models": {MODEL: ["PC1"]}})
    state = runtime.context.registry.state("PC1")
    await wait_until(lambda: state.status == "invalid")
    sim.state.config.llmhealth = "absent"
    await wait_until(lambda: state.status == "idle")
    assert (state.discovery.agent_seen, state.kind) == (False, "llama.cpp")
