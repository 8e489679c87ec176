"""state/events.py: the errors panel's counts over the last 5 minutes and the last hour."""
from __future__ import annotations

from llama_balancer.state.events import MAX_KINDS, EventCounts

T0 = 10_000.0


def test_counts_by_group_and_kind_in_both_windows_most_common_first():
    events = EventCounts()
    events.add(T0, "5xx", "queue_timeout")
    events.add(T0, "5xx", "upstream_connect", 3)
    events.add(T0 + 1, "retries", "PC1: connect", 2)

    summary = events.summary(T0 + 5)
    assert summary["last_5m"] == {"5xx": {"upstream_connect": 3, "queue_timeout": 1}, "retries": {"PC1: connect": 2}}
    assert summary["last_1h"] == summary["last_5m"]
    assert list(summary["last_5m"]["5xx"]) == ["upstream_connect", "queue_timeout"]
    assert summary["window_s"] == {"last_5m": 300.0, "last_1h": 3600.0}


def test_events_leave_the_five_minute_window_then_the_hour():
    events = EventCounts()
    events.add(T0, "4xx", "queue_full")
    events.add(T0 + 400, "4xx", "queue_full")

    summary = events.summary(T0 + 400)
    assert summary["last_5m"] == {"4xx": {"queue_full": 1}}
    assert summary["last_1h"] == {"4xx": {"queue_full": 2}}
    assert events.summary(T0 + 3700)["last_1h"] == {"4xx": {"queue_full": 1}}
    assert events.summary(T0 + 4100) == {"window_s": {"last_5m": 300.0, "last_1h": 3600.0},
                                         "last_5m": {}, "last_1h": {}}


def test_kinds_per_group_are_bounded():
    events = EventCounts()
    for index in range(MAX_KINDS + 10):
        events.add(T0, "queue_timeouts", f"model-{index}")
    kinds = events.summary(T0)["last_1h"]["queue_timeouts"]
    assert len(kinds) == MAX_KINDS + 1 and kinds["(other)"] == 10


def test_nothing_counted_for_zero():
    events = EventCounts()
    events.add(T0, "retries", "PC1: timeout", 0)
    assert events.summary(T0)["last_1h"] == {}
