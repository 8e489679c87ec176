"""core/transitions.py: only the changes that alter where requests may go are reported."""
from __future__ import annotations

import pytest

from llama_balancer.core.transitions import Condition, changes

IDLE, BUSY, DOWN = Condition("idle"), Condition("busy"), Condition("invalid")


@pytest.mark.parametrize("before, after, expected", [
    (IDLE, BUSY, []),  # normal work is no news
    (BUSY, IDLE, []),
    (None, IDLE, []),  # the start: the per-server detection line says it
    (None, DOWN, ["down"]),  # down from the start
    (IDLE, DOWN, ["down"]),
    (DOWN, BUSY, ["up"]),
    (IDLE, Condition("idle", suspect=True), ["suspect"]),
    (Condition("idle", suspect=True), IDLE, ["cleared"]),
    (Condition("idle", suspect=True), Condition("idle", True, circuit_open=True), ["circuit_open"]),
    (Condition("idle", circuit_open=True), IDLE, ["circuit_closed"]),
    (Condition("idle", suspect=True), DOWN, ["down"]),  # the poll's verdict says more than suspicion
])
def test_the_changes_an_operator_is_told_about(before, after, expected):
    assert changes(before, after) == expected


def test_health_is_what_routing_sees():
    assert Condition("idle", suspect=True).health == "suspect"
    assert Condition("busy", circuit_open=True).health == "invalid"
    assert Condition("invalid", suspect=True).health == "invalid"
