"""state/sticky.py: (identity x requested model) -> server and instance, for a TTL."""
from __future__ import annotations

import pytest

from llama_balancer.core.routing import StickyBinding
from llama_balancer.state.sticky import StickyStore

M = "gpt-oss:20b"
TTL = 180.0


@pytest.fixture
def store(clock) -> StickyStore:
    return StickyStore(TTL, clock)


def test_a_bound_identity_gets_its_server_and_instance_back(store, clock):
    store.bind("alice", "10.0.0.5", M, "PC1", f"{M}-2")

    assert store.get("alice", M) == StickyBinding("PC1", f"{M}-2", clock.monotonic())


def test_bindings_are_keyed_by_the_requested_model_not_the_instance(store):
    store.bind("alice", "10.0.0.5", M, "PC1", f"{M}-2")

    assert store.get("alice", f"{M}-2") is None
    assert store.get("alice", M) is not None


def test_nothing_is_bound_for_an_unknown_identity_or_model(store):
    store.bind("alice", "10.0.0.5", M, "PC1", M)

    assert store.get("bob", M) is None
    assert store.get("alice", "qwen3") is None


def test_binding_lives_exactly_the_ttl_then_expires(store, clock):
    store.bind("alice", "ip", M, "PC1", M)

    clock.advance(TTL)
    assert store.get("alice", M) is not None

    clock.advance(0.001)
    assert store.get("alice", M) is None
    assert len(store) == 0


def test_an_expired_binding_frees_its_target_for_the_next_bind(store, clock):
    store.bind("alice", "ip", M, "PC1", M)
    clock.advance(TTL + 1)
    assert store.get("alice", M) is None

    store.bind("alice", "ip", M, "PC1", M)

    assert store.get("alice", M) is not None


def test_binding_a_new_identity_to_the_same_target_drops_the_old_identity(store, clock):
    store.bind("alice", "10.0.0.5", M, "PC1", M)

    store.bind("bob", "10.0.0.6", M, "PC1", M)

    assert store.get("alice", M) is None
    assert store.get("bob", M) == StickyBinding("PC1", M, clock.monotonic())
    assert len(store) == 1


def test_a_different_instance_on_the_same_server_is_a_different_target(store):
    store.bind("alice", "ip", M, "PC1", M)

    store.bind("bob", "ip", M, "PC1", f"{M}-2")

    assert store.get("alice", M).instance == M
    assert store.get("bob", M).instance == f"{M}-2"


def test_the_same_instance_name_on_another_server_is_a_different_target(store):
    store.bind("alice", "ip", M, "PC1", M)

    store.bind("bob", "ip", M, "PC2", M)

    assert store.get("alice", M).server == "PC1"
    assert store.get("bob", M).server == "PC2"


def test_one_identity_may_hold_bindings_for_several_models(store):
    store.bind("alice", "ip", M, "PC1", M)
    store.bind("alice", "ip", "qwen3", "PC2", "qwen3")

    assert store.get("alice", M).server == "PC1"
    assert store.get("alice", "qwen3").server == "PC2"
    assert len(store) == 2


def test_moving_an_identity_to_another_instance_frees_the_old_target(store):
    store.bind("alice", "ip", M, "PC1", M)
    store.bind("alice", "ip", M, "PC1", f"{M}-2")
    # bob takes alice's old target; alice's current binding must survive that.
    store.bind("bob", "ip", M, "PC1", M)

    assert store.get("alice", M).instance == f"{M}-2"
    assert store.get("bob", M).instance == M
    assert len(store) == 2


def test_rebinding_the_same_target_refreshes_without_dropping_itself(store, clock):
    store.bind("alice", "ip", M, "PC1", M)
    clock.advance(100)

    store.bind("alice", "ip", M, "PC1", M)
    clock.advance(100)

    assert store.get("alice", M) == StickyBinding("PC1", M, clock.monotonic() - 100)


def test_refresh_extends_the_binding_when_it_still_points_to_the_target(store, clock):
    store.bind("alice", "ip", M, "PC1", M)
    clock.advance(170)

    store.refresh("alice", M, "PC1", M)
    clock.advance(170)

    assert store.get("alice", M) is not None


def test_refresh_for_another_target_leaves_the_binding_alone(store, clock):
    store.bind("alice", "ip", M, "PC1", f"{M}-2")
    clock.advance(170)

    store.refresh("alice", M, "PC1", M)  # the request went to another instance
    store.refresh("alice", M, "PC2", f"{M}-2")  # ... or another server
    clock.advance(20)

    assert store.get("alice", M) is None


def test_refresh_without_a_binding_creates_nothing(store):
    store.refresh("alice", M, "PC1", M)

    assert store.get("alice", M) is None
    assert store.entries() == []


def test_entries_have_the_snapshot_shape(store, clock):
    store.bind("alice", "10.0.0.5", M, "PC1", f"{M}-2")
    clock.advance(1.5)
    store.bind("10.0.0.6", "10.0.0.6", "qwen3", "PC2", "qwen3")

    assert store.entries() == [
        {
            "key": f"alice|{M}",
            "ip": "alice",
            "model": M,
            "backend": "PC1",
            "instance": f"{M}-2",
            "client_ip": "10.0.0.5",
            "updated_at": "2026-11-27T09:00:00.000Z",
        },
        {
            "key": "10.0.0.6|qwen3",
            "ip": "10.0.0.6",
            "model": "qwen3",
            "backend": "PC2",
            "instance": "qwen3",
            "client_ip": "10.0.0.6",
            "updated_at": "2026-11-27T09:00:01.500Z",
        },
    ]


def test_entries_show_the_refresh_time(store, clock):
    store.bind("alice", "ip", M, "PC1", M)
    clock.advance(61)

    store.refresh("alice", M, "PC1", M)

    assert store.entries()[0]["updated_at"] == "2026-11-27T09:01:01.000Z"


def test_entries_drop_expired_bindings(store, clock):
    store.bind("alice", "ip", M, "PC1", M)
    clock.advance(100)
    store.bind("bob", "ip", M, "PC2", M)
    clock.advance(100)  # alice is 200 s old, bob 100 s

    assert [e["key"] for e in store.entries()] == [f"bob|{M}"]
    assert len(store) == 1


def test_ttl_uses_the_monotonic_clock_not_the_wall_clock(store, clock):
    store.bind("alice", "ip", M, "PC1", M)

    clock.wall_time += 10_000  # an NTP jump must not expire bindings
    assert store.get("alice", M) is not None

    clock.mono += TTL + 1
    assert store.get("alice", M) is None
