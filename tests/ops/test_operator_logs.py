"""The operational log, over real sockets: what an operator reads when a backend dies, a
request fails over, a circuit opens, the queue is full, a config is reloaded; and, at debug
level, every routing decision with its reason. Each line is a record with an event name and
fields (io/oplog.py formats them as key=value or JSON)."""
from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.conftest import FAST_OPTIONS, server_entry, wait_until

MODEL = "m"
CHAT = "/v1/chat/completions"


def chat(tokens: int = 2, user: str = "u") -> dict:
    return {"model": MODEL, "max_tokens": tokens,
            "messages": [{"role": "system", "content": f"ユーザーの名前は「{user}」"}, {"role": "user", "content": "hi"}]}


def events(caplog, name: str) -> list[dict]:
    """The fields of every logged record of event ``name`` (plus its level and message)."""
    return [{**r.lb_fields, "level": r.levelname, "msg": r.getMessage()} for r in caplog.records
            if getattr(r, "lb_event", None) == name]


async def post(http, runtime, data: dict) -> int:
    async with http.post(runtime.url + CHAT, json=data) as response:
        await response.read()
        return response.status


async def test_a_backend_going_down_and_coming_back_is_logged_with_the_reason(sims, balancer, caplog):
    caplog.set_level(logging.INFO, logger="llama_balancer")
    sim = await sims(name="PC1", models=[MODEL])
    await balancer({"servers": {"PC1": server_entry(sim)}, "models": {MODEL: ["PC1"]}})
    await sim.set_fault("refuse")  # the socket closes: every poll fails
    [down] = await wait_until(lambda: events(caplog, "backend_state"))
    assert down["change"] == "down" and down["to"] == "invalid" and down["level"] == "WARNING"
    assert "/health unreachable" in down["reason"] and "PC1" in down["reason"]
    await sim.set_fault(None)
    await wait_until(lambda: len(events(caplog, "backend_state")) == 2)
    up = events(caplog, "backend_state")[1]
    assert up["change"] == "up" and up["from"] == "invalid" and up["level"] == "INFO"
    await asyncio.sleep(0.2)  # normal work (idle <-> busy) is no news
    assert len(events(caplog, "backend_state")) == 2


async def test_a_retry_and_its_failover_are_logged_and_a_run_of_failures_opens_then_closes_the_circuit(
        sims, balancer, http, caplog):
    caplog.set_level(logging.INFO, logger="llama_balancer")
    bad = await sims(name="PC1", models=[MODEL], fault="503")  # polls answer, requests get 503
    good = await sims(name="PC2", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(bad), "PC2": server_entry(good)},
                              "models": {MODEL: ["PC1", "PC2"]},
                              "balancer": {"routing": {"policy": "classic", "circuit_failures": 2,
                                                       "circuit_open_s": 0.3}}})
    assert await post(http, runtime, chat()) == 200
    [retry] = events(caplog, "retry")
    assert retry["server"] == "PC1" and retry["kind"] == "http_503" and "503" in retry["reason"]
    [failover] = events(caplog, "failover")
    assert failover["from"] == "PC1" and failover["to"] == "PC2" and failover["request_id"] == retry["request_id"]
    changes = [e["change"] for e in events(caplog, "backend_state")]
    assert changes[0] == "suspect"
    for attempt in range(4):  # two failures in a row open it (a poll clears suspicion in between)
        if "circuit_open" in [e["change"] for e in events(caplog, "backend_state")]:
            break
        await wait_until(lambda: runtime.context.registry.state("PC1").suspect is False)
        assert await post(http, runtime, chat(user=f"user-{attempt}")) == 200  # new identities: not sticky to PC2
    opened = next(e for e in events(caplog, "backend_state") if e["change"] == "circuit_open")
    assert opened["to"] == "invalid" and "503" in opened["reason"] and opened["level"] == "WARNING"
    await wait_until(lambda: "circuit_closed" in [e["change"] for e in events(caplog, "backend_state")])


async def test_a_full_queue_and_a_queue_timeout_are_logged(sims, balancer, http, caplog):
    caplog.set_level(logging.INFO, logger="llama_balancer")
    sim = await sims(name="PC1", models=[MODEL], fast=False, chunk_delay_s=0.05)
    runtime = await balancer({"servers": {"PC1": server_entry(sim, **{"request-max": 1})},
                              "models": {MODEL: ["PC1"]},
                              "balancer": {"routing": {"queue_max": 1, "queue_timeout_s": 1.0},
                                           # one poll timing out marks PC1 invalid, and then nothing
                                           # queues: under the whole suite's load 0.5 s was too little
                                           "health_read_timeout_s": 5.0, "health_connect_timeout_s": 5.0}})
    # The third request must find the waiter still queued: a second of slack for a loaded machine
    # (0.3 s was too little once under the whole suite); the holder outlasts the wait (1.5 s).
    holder = asyncio.create_task(post(http, runtime, chat(tokens=30, user="holder")))
    await wait_until(lambda: runtime.context.registry.total_inflight() == 1)
    waiter = asyncio.create_task(post(http, runtime, chat(user="waiter")))
    await wait_until(lambda: len(runtime.context.queue) == 1)
    assert await post(http, runtime, chat(user="third")) == 429
    assert await waiter == 503
    await holder
    [full] = events(caplog, "queue_full")
    assert full["status"] == 429 and full["model"] == MODEL and full["level"] == "WARNING"
    [timeout] = events(caplog, "queue_timeout")
    assert timeout["status"] == 503 and timeout["waited_s"] >= 0.95


async def test_a_reload_logs_what_it_changed(sims, balancer, http, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="llama_balancer")
    one, two = await sims(name="PC1", models=[MODEL]), await sims(name="PC2", models=[MODEL])
    path = tmp_path / "server-list.json"
    data = {"servers": {"PC1": server_entry(one)}, "models": {MODEL: ["PC1"]},
            "balancer": {**FAST_OPTIONS, "config_poll_interval_s": 60}}
    path.write_text(json.dumps(data))
    runtime = await balancer(data, config_path=str(path))
    data["servers"]["PC2"] = server_entry(two)
    data["servers"]["PC1"]["request-max"] = 2
    data["models"] = {"m.*": ["PC2", "PC1"]}
    data["balancer"]["sticky_ttl_s"] = 5
    path.write_text(json.dumps(data))
    async with http.post(runtime.url + "/admin/reload") as response:
        assert response.status == 200
    [reloaded] = events(caplog, "config_reloaded")
    assert reloaded["servers_added"] == ["PC2"] and reloaded["servers_changed"] == ["PC1(request-max)"]
    assert reloaded["patterns_added"] == ["m.*"] and reloaded["patterns_removed"] == [MODEL]
    assert reloaded["options_changed"] == ["balancer.sticky_ttl_s"] and reloaded["path"] == str(path)
    async with http.post(runtime.url + "/admin/reload") as response:
        assert response.status == 200
    assert "no changes" in events(caplog, "config_reloaded")[1]["msg"]


async def test_at_debug_level_each_routing_decision_is_logged_with_its_reason(sims, balancer, http, caplog):
    sim = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(sim, kind="llama.cpp")}, "models": {MODEL: ["PC1"]}})
    caplog.set_level(logging.INFO, logger="llama_balancer")
    assert await post(http, runtime, chat()) == 200
    assert events(caplog, "route") == []  # info level: nothing per request
    caplog.set_level(logging.DEBUG, logger="llama_balancer")
    assert await post(http, runtime, chat()) == 200
    assert await post(http, runtime, {**chat(), "model": "elsewhere"}) == 200  # no pattern: the fallback
    first, fallback = events(caplog, "route")
    assert first["server"] == "PC1" and first["reason"] in ("sticky", "prefix", "least-loaded", "spare-slot")
    assert first["candidates"] == ["PC1"] and first["slot"] is not None and first["request_id"]
    assert fallback["reason"] == "fallback" and fallback["model"] == "elsewhere"


@pytest.mark.parametrize("mode", ["fallback", "reject"])
async def test_an_unknown_model_name_is_warned_about_once(sims, balancer, http, caplog, mode):
    caplog.set_level(logging.INFO, logger="llama_balancer")
    sim = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(sim)}, "models": {"m.*": ["PC1"]},
                              "balancer": {"unknown_model": mode}})
    statuses = [await post(http, runtime, {**chat(), "model": name}) for name in ("mtypo", "mtypo", "mother")]
    assert statuses == ([200] * 3 if mode == "fallback" else [404] * 3)
    warned = events(caplog, "unknown_model")
    assert [w["model"] for w in warned] == ["mtypo", "mother"] and warned[0]["action"] == mode
    assert "served: m" in warned[0]["msg"]
