"""state/registry.py: backend state, in-flight slots that cannot leak, reloads that keep state."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llama_balancer.core.config import Config, config_from_data
from llama_balancer.core.health import HealthSample
from llama_balancer.state.registry import Registry

M = "gpt-oss:20b"


def make_config(servers: dict[str, dict[str, Any]] | None = None, **rest: Any) -> Config:
    if servers is None:
        servers = {
            "PC1": {"addr": "http://10.0.0.1", "health-port": 18000, "model-port": 8081, "request-max": 2},
            "PC2": {"addr": "http://10.0.0.2", "health-port": 18000, "model-port": 8081},
        }
    return config_from_data({"servers": servers, **rest})


@pytest.fixture
def registry(clock) -> Registry:
    return Registry(make_config(), clock)


def idle(registry: Registry, name: str, times: int = 5) -> None:
    for _ in range(times):
        registry.record_health(name, HealthSample("idle", 3.0), f"http://{name}/llmhealth")


class Boom(Exception):
    pass


# --- slots --------------------------------------------------------------------------------


async def test_slot_counts_per_instance_and_per_server_while_held(registry):
    state = registry.state("PC1")

    async with registry.slot("PC1", M):
        async with registry.slot("PC1", M):
            async with registry.slot("PC1", f"{M}-2"):
                assert state.inflight == {M: 2, f"{M}-2": 1}
                assert state.total == 3
                assert registry.total_inflight() == 3
            assert state.inflight == {M: 2}
        assert state.inflight == {M: 1}
        assert state.total == 1

    assert state.inflight == {}
    assert state.total == 0
    assert registry.state("PC2").total == 0


async def test_slot_is_given_back_when_the_body_raises(registry):
    with pytest.raises(Boom):
        async with registry.slot("PC1", M):
            assert registry.state("PC1").total == 1
            raise Boom()

    assert registry.state("PC1").total == 0
    assert registry.state("PC1").inflight == {}


async def test_slot_is_given_back_when_the_task_is_cancelled(registry):
    entered = asyncio.Event()
    never = asyncio.Event()

    async def request() -> None:
        async with registry.slot("PC1", M):
            entered.set()
            await never.wait()

    task = asyncio.create_task(request())
    await entered.wait()
    assert registry.state("PC1").inflight == {M: 1}

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert registry.state("PC1").total == 0
    assert registry.state("PC1").inflight == {}


async def test_release_is_idempotent_inside_and_after_the_block(registry):
    async with registry.slot("PC1", M) as slot:
        async with registry.slot("PC1", M):
            slot.release()
            slot.release()
            assert registry.state("PC1").inflight == {M: 1}
            assert registry.state("PC1").total == 1
    slot.release()

    assert registry.state("PC1").total == 0
    assert registry.state("PC1").inflight == {}


async def test_a_slot_never_entered_gives_nothing_back(registry):
    async with registry.slot("PC1", M):
        registry.slot("PC1", M).release()
        assert registry.state("PC1").total == 1


async def test_slot_counts_show_in_the_routing_view(registry):
    async with registry.slot("PC1", M):
        async with registry.slot("PC1", "other"):
            view = registry.view("PC1")
            assert view.total_inflight == 2
            assert view.full  # request-max 2
            assert dict(view.inflight) == {M: 1, "other": 1}


async def test_slot_on_an_unknown_server_is_refused(registry):
    with pytest.raises(KeyError):
        registry.slot("PC9", M)


# --- health and models --------------------------------------------------------------------


def test_status_is_busy_until_the_first_sample_then_judged_over_the_window(registry):
    assert registry.state("PC1").status == "busy"

    idle(registry, "PC1")
    assert registry.view("PC1").status == "idle"

    registry.record_health("PC1", HealthSample("invalid", detail="HTTP 500"), "u")
    assert registry.view("PC1").status == "invalid"


def test_the_window_keeps_only_the_last_health_window_samples(registry):
    registry.record_health("PC1", HealthSample("invalid"), "u")
    idle(registry, "PC1", times=4)
    assert registry.state("PC1").status == "invalid"

    idle(registry, "PC1", times=1)
    assert registry.state("PC1").status == "idle"
    assert len(registry.state("PC1").samples) == 5


def test_record_health_keeps_the_last_poll_with_time_and_url(registry, clock):
    registry.record_health("PC1", HealthSample("busy", 77.0), "http://10.0.0.1:18000/llmhealth")

    assert registry.state("PC1").last == {
        "status": "busy",
        "gpu_util_max5s": 77.0,
        "updated_at": "2026-11-27T09:00:00.000Z",
        "url": "http://10.0.0.1:18000/llmhealth",
    }


def test_record_health_keeps_the_detail_of_a_failure(registry):
    registry.record_health("PC1", HealthSample("invalid", detail="timeout"), "u")

    assert registry.state("PC1").last["detail"] == "timeout"


def test_record_models_sets_what_the_view_serves(registry, clock):
    assert registry.view("PC1").served is None

    registry.record_models("PC1", [M, f"{M}-2"])

    assert registry.view("PC1").served == (M, f"{M}-2")
    assert registry.state("PC1").served_at == clock.monotonic()


def test_record_on_a_removed_server_is_ignored(registry):
    registry.reconfigure(make_config({"PC2": {"addr": "http://10.0.0.2", "health-port": 18000, "model-port": 8081}}))

    registry.record_health("PC1", HealthSample("idle"), "u")
    registry.record_models("PC1", [M])

    assert registry.names() == ["PC2"]


# --- reconfigure --------------------------------------------------------------------------


async def test_reconfigure_keeps_the_same_state_and_counts_for_a_kept_server(registry):
    idle(registry, "PC1")
    registry.record_models("PC1", [M])
    before = registry.state("PC1")

    async with registry.slot("PC1", M):
        registry.reconfigure(make_config())
        assert registry.state("PC1") is before
        assert registry.state("PC1").total == 1

    assert before.total == 0
    assert registry.state("PC1").total == 0
    assert registry.state("PC1").status == "idle"
    assert registry.state("PC1").served == (M,)


async def test_a_slot_held_across_a_request_max_change_counts_down_on_the_new_config(registry):
    idle(registry, "PC1")
    servers = {"PC1": {"addr": "http://10.0.0.1", "health-port": 18000, "model-port": 8081, "request-max": 1}}

    async with registry.slot("PC1", M):
        registry.reconfigure(make_config(servers))
        assert registry.view("PC1").full

    assert not registry.view("PC1").full
    assert registry.view("PC1").request_max == 1
    # Only the cap changed: the health window and model list are still good.
    assert registry.view("PC1").status == "idle"


def test_reconfigure_resets_samples_when_the_health_address_changes(registry):
    idle(registry, "PC1")
    registry.record_models("PC1", [M])
    servers = {"PC1": {"addr": "http://10.0.0.9", "health-port": 18000, "model-port": 8081}}

    registry.reconfigure(make_config(servers))

    state = registry.state("PC1")
    assert len(state.samples) == 0
    assert state.last is None
    assert state.status == "busy"
    assert state.served is None
    assert state.server.model_base == "http://10.0.0.9:8081"


def test_reconfigure_forgets_discovered_models_when_only_the_model_port_changes(registry):
    idle(registry, "PC1")
    registry.record_models("PC1", [M])
    servers = {"PC1": {"addr": "http://10.0.0.1", "health-port": 18000, "model-port": 9000}}

    registry.reconfigure(make_config(servers))

    assert registry.state("PC1").served is None
    assert registry.state("PC1").status == "idle"


def test_reconfigure_drops_removed_servers_and_adds_new_ones(registry):
    servers = {
        "PC2": {"addr": "http://10.0.0.2", "health-port": 18000, "model-port": 8081},
        "PC3": {"addr": "http://10.0.0.3", "health-port": 18000, "model-port": 8081},
    }

    registry.reconfigure(make_config(servers))

    assert registry.names() == ["PC2", "PC3"]
    assert [b["name"] for b in registry.snapshot()] == ["PC2", "PC3"]
    with pytest.raises(KeyError):
        registry.state("PC1")
    assert registry.state("PC3").status == "busy"


def test_reconfigure_resizes_the_health_window_keeping_the_newest_samples(registry):
    registry.record_health("PC1", HealthSample("busy"), "u")
    idle(registry, "PC1", times=4)
    assert registry.state("PC1").status == "busy"

    registry.reconfigure(make_config(balancer={"health_window": 3}))

    assert registry.state("PC1").samples.maxlen == 3
    assert [s.status for s in registry.state("PC1").samples] == ["idle"] * 3
    assert registry.state("PC1").status == "idle"


# --- snapshot -----------------------------------------------------------------------------


async def test_snapshot_has_the_old_tools_keys_per_backend(registry):
    registry.record_health("PC1", HealthSample("idle", 12.5), "http://10.0.0.1:18000/llmhealth")
    registry.record_models("PC1", [M, f"{M}-2"])

    async with registry.slot("PC1", f"{M}-2"):
        snap = registry.snapshot()

    assert isinstance(snap, list) and [b["name"] for b in snap] == ["PC1", "PC2"]  # a list, in config order
    pc1, pc2 = snap
    assert {"base", "status", "last", "total_inflight", "model_inflight", "request_max"} <= set(pc1)
    assert pc1["base"] == "http://10.0.0.1:8081"
    assert pc1["status"] == "idle"
    assert pc1["last"] == {
        "status": "idle",
        "gpu_util_max5s": 12.5,
        "updated_at": "2026-11-27T09:00:00.000Z",
        "url": "http://10.0.0.1:18000/llmhealth",
    }
    assert pc1["total_inflight"] == 1
    assert pc1["model_inflight"] == {f"{M}-2": 1}
    assert pc1["request_max"] == 2
    assert pc1["models"] == [M, f"{M}-2"]

    assert pc2["status"] == "busy"
    assert pc2["last"] is None
    assert pc2["request_max"] is None
    assert pc2["models"] is None
    assert pc2["total_inflight"] == 0 and pc2["model_inflight"] == {}


async def test_snapshot_is_a_copy_not_a_live_view(registry):
    async with registry.slot("PC1", M):
        snap = registry.snapshot()

    assert snap[0]["model_inflight"] == {M: 1}
    assert registry.state("PC1").inflight == {}
