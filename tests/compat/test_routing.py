"""SPEC Part A, "Routing of POST /v1/chat/completions", end to end over real sockets."""
from __future__ import annotations

import asyncio

import pytest

from tests.conftest import assert_nothing_in_flight, backend_of, server_entry, snapshot, wait_until

MODEL = "llama-3.1-8b"


@pytest.fixture
def balancer(balancer):
    """SPEC Part A's routing is the "classic" policy (the default is cache-aware)."""
    async def start(data: dict, **kwargs):
        options = data.setdefault("balancer", {})
        options.setdefault("routing", {"policy": "classic"})
        return await balancer(data, **kwargs)
    return start


def chat(model: str = MODEL, *, user: str | None = None, max_tokens: int = 4, stream: bool = False) -> dict:
    messages = [{"role": "user", "content": "hello there"}]
    if user:
        messages.insert(0, {"role": "system", "content": f"あなたはアシスタントです。ユーザーの名前は「{user}」です。"})
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream}


async def post_chat(http, runtime, body: dict, **headers: str) -> tuple[int, str, str, dict]:
    """(status, server, instance, json) of one chat request through the balancer."""
    async with http.post(runtime.url + "/v1/chat/completions", json=body, headers=headers) as response:
        data = await response.json()
        return response.status, response.headers.get("X-Sim-Server", ""), response.headers.get("X-Sim-Instance", ""), data


async def hold(http, runtime, body: dict, **headers: str) -> asyncio.Task:
    """Start a slow request in the background and wait until the balancer counts it in flight."""
    before = runtime.context.registry.total_inflight()
    task = asyncio.create_task(post_chat(http, runtime, body, **headers))
    await wait_until(lambda: runtime.context.registry.total_inflight() > before)
    return task


@pytest.fixture
async def two_servers(sims, balancer):
    pc1 = await sims(name="PC1", models=[MODEL], fast=False, gen_tps=1000.0)
    pc2 = await sims(name="PC2", models=[MODEL], fast=False, gen_tps=1000.0)
    runtime = await balancer({
        "servers": {"PC1": server_entry(pc1), "PC2": server_entry(pc2)},
        "models": {"llama-3\\.1.*": ["PC1", "PC2"], "other": ["PC2"]},
        "fallback_server": "PC2",
    })
    return pc1, pc2, runtime


async def test_an_idle_cluster_sends_the_model_as_asked_to_the_first_listed_server(two_servers, http):
    _, _, runtime = two_servers
    status, server, instance, data = await post_chat(http, runtime, chat())
    assert (status, server, instance) == (200, "PC1", MODEL)
    assert data["model"] == MODEL


async def test_a_model_matching_no_pattern_goes_to_the_fallback_server(two_servers, http):
    _, _, runtime = two_servers
    status, server, _, _ = await post_chat(http, runtime, chat("mistral-7b"))
    assert (status, server) == (200, "PC2")


async def test_a_second_request_goes_to_the_next_server_while_the_first_is_busy(two_servers, http):
    pc1, _, runtime = two_servers
    first = await hold(http, runtime, chat(user="alice", max_tokens=400))
    # PC1 has the model in flight and, once its agent reports it, is busy: next server.
    await wait_until(lambda: runtime.context.registry.state("PC1").status == "busy")
    status, server, _, _ = await post_chat(http, runtime, chat(user="bob"))
    assert (status, server) == (200, "PC2")
    assert (await first)[1] == "PC1"
    await assert_nothing_in_flight(http, runtime)


async def test_request_max_caps_a_server_over_all_its_models(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL, "qwen"], fast=False, gen_tps=1000.0)
    pc2 = await sims(name="PC2", models=[MODEL, "qwen"])
    runtime = await balancer({
        "servers": {"PC1": server_entry(pc1, **{"request-max": 1}), "PC2": server_entry(pc2)},
        "models": {"qwen": ["PC1", "PC2"], MODEL: ["PC1", "PC2"]},
    })
    first = await hold(http, runtime, chat("qwen", user="alice", max_tokens=300))
    # A different model, free on PC1, but PC1 is at its request-max of 1 in total.
    status, server, _, _ = await post_chat(http, runtime, chat(MODEL, user="bob"))
    assert (status, server) == (200, "PC2")
    await first
    await assert_nothing_in_flight(http, runtime)


async def test_a_busy_model_is_rewritten_to_a_free_instance_on_the_same_server(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL], instances=2, fast=False, gen_tps=1000.0)
    pc2 = await sims(name="PC2", models=[MODEL])
    runtime = await balancer({
        "servers": {"PC1": server_entry(pc1), "PC2": server_entry(pc2)},
        "models": {MODEL: ["PC1", "PC2"]},
    })
    first = await hold(http, runtime, chat(user="alice", max_tokens=300))
    status, server, instance, data = await post_chat(http, runtime, chat(user="bob"))
    assert (status, server, instance) == (200, "PC1", MODEL + "-2")
    assert data["model"] == MODEL + "-2"
    assert (await first)[2] == MODEL
    await assert_nothing_in_flight(http, runtime)


async def test_sticky_identity_returns_to_its_server_and_instance_while_others_are_free(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL], instances=2, fast=False, gen_tps=1000.0)
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {MODEL: ["PC1"]}})
    first = await hold(http, runtime, chat(user="bob", max_tokens=300))
    _, _, instance, _ = await post_chat(http, runtime, chat(user="alice"))
    assert instance == MODEL + "-2"
    await first
    await wait_until(lambda: runtime.context.registry.total_inflight() == 0)
    # Everything is free now; alice is still bound to the -2 instance (keyed by the model she
    # asked for, which the old tool lost whenever it rewrote to model-2).
    _, _, instance, _ = await post_chat(http, runtime, chat(user="alice"))
    assert instance == MODEL + "-2"
    snap = await snapshot(http, runtime)
    alice = [entry for entry in snap["sticky"] if entry["key"] == f"alice|{MODEL}"]
    assert alice and alice[0]["model"] == MODEL and alice[0]["backend"] == "PC1"
    assert snap["sticky_count"] == len(snap["sticky"]) == 2


async def test_binding_a_new_identity_to_an_instance_drops_the_old_binding(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {MODEL: ["PC1"]}})
    await post_chat(http, runtime, chat(user="alice"))
    await post_chat(http, runtime, chat(user="carol"))
    keys = [entry["key"] for entry in (await snapshot(http, runtime))["sticky"]]
    assert keys == [f"carol|{MODEL}"]


async def test_the_client_ip_is_the_identity_without_a_user_name(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL])
    # X-Forwarded-For counts only from a trusted proxy (here: the test client on loopback).
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {MODEL: ["PC1"]},
                              "balancer": {"trusted_proxies": ["127.0.0.1"]}})
    await post_chat(http, runtime, chat(), **{"X-Forwarded-For": "10.1.2.3"})
    entries = (await snapshot(http, runtime))["sticky"]
    assert [(e["key"], e["ip"]) for e in entries] == [(f"10.1.2.3|{MODEL}", "10.1.2.3")]


async def test_forwarded_for_from_an_untrusted_peer_cannot_take_another_identity(two_servers, http):
    _, _, runtime = two_servers
    await post_chat(http, runtime, chat(), **{"X-Forwarded-For": "10.1.2.3"})
    entries = (await snapshot(http, runtime))["sticky"]
    assert [(e["key"], e["ip"]) for e in entries] == [(f"127.0.0.1|{MODEL}", "127.0.0.1")]


async def test_sticky_binding_is_not_used_once_its_server_turns_invalid(two_servers, http):
    pc1, _, runtime = two_servers
    _, server, _, _ = await post_chat(http, runtime, chat(user="alice"))
    assert server == "PC1"
    await pc1.set_fault("refuse")
    await wait_until(lambda: runtime.context.registry.state("PC1").status == "invalid")
    status, server, _, _ = await post_chat(http, runtime, chat(user="alice"))
    assert (status, server) == (200, "PC2")


async def test_nothing_suitable_sends_to_the_first_listed_server(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL], llmhealth="error")
    pc2 = await sims(name="PC2", models=[MODEL], llmhealth="error")
    runtime = await balancer({
        "servers": {"PC1": server_entry(pc1), "PC2": server_entry(pc2)},
        "models": {MODEL: ["PC2", "PC1"]},
    })
    assert runtime.context.registry.state("PC1").status == "invalid"
    status, server, _, _ = await post_chat(http, runtime, chat())
    assert (status, server) == (200, "PC2")
    assert runtime.context.stats.summary()["recent"][0]["reason"] == "last-resort"


async def test_a_server_without_the_model_is_skipped(sims, balancer, http):
    pc1 = await sims(name="PC1", models=["qwen"])
    pc2 = await sims(name="PC2", models=[MODEL])
    runtime = await balancer({
        "servers": {"PC1": server_entry(pc1), "PC2": server_entry(pc2)},
        "models": {".*": ["PC1", "PC2"]},
    })
    _, server, _, _ = await post_chat(http, runtime, chat(MODEL))
    assert server == "PC2"


async def test_a_stream_counts_in_flight_until_its_body_ends(two_servers, http):
    pc1, _, runtime = two_servers
    async with http.post(runtime.url + "/v1/chat/completions", json=chat(max_tokens=200, stream=True)) as response:
        await response.content.readline()
        snap = await snapshot(http, runtime)
        assert backend_of(snap, "PC1")["model_inflight"] == {MODEL: 1}
        assert backend_of(snap, "PC1")["total_inflight"] == 1
        await response.read()
    await assert_nothing_in_flight(http, runtime)
