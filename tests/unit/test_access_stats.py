"""state/access_stats.py: the last hour of routed requests for /access-log-stats."""
from __future__ import annotations

import pytest

from llama_balancer.state.access_stats import AccessStats

HOUR = 3600.0


@pytest.fixture
def stats(clock) -> AccessStats:
    return AccessStats(HOUR, clock)


def record(stats: AccessStats, ip: str = "10.0.0.1", model: str = "m", user: str | None = None,
           server: str = "PC1", instance: str = "m", reason: str = "free-instance") -> None:
    stats.record(ip, model, user, server, instance, reason)


def test_an_empty_log_has_zero_totals_and_sixty_empty_minutes(stats):
    summary = stats.summary()

    assert summary["total_requests"] == 0
    assert summary["unique_ips"] == summary["unique_models"] == summary["unique_usernames"] == 0
    assert summary["ip_counts"] == summary["model_counts"] == summary["username_counts"] == summary["by_server"] == {}
    assert summary["recent"] == []
    assert len(summary["per_minute"]) == 60
    assert all(bucket["count"] == 0 for bucket in summary["per_minute"])
    assert summary["time_series"] == {}
    assert summary["oldest_log"] is None and summary["newest_log"] is None
    assert summary["retention_hours"] == 1.0
    assert summary["window_seconds"] == HOUR
    assert summary["now"] == "2026-11-27T09:00:00.000Z"


def test_totals_unique_counts_and_counters(stats):
    record(stats, ip="10.0.0.1", model="a", user="alice", server="PC1")
    record(stats, ip="10.0.0.1", model="a", user="alice", server="PC1")
    record(stats, ip="10.0.0.2", model="b", user=None, server="PC2")
    record(stats, ip="10.0.0.3", model="a", user="bob", server="PC1")

    summary = stats.summary()

    assert summary["total_requests"] == 4
    assert summary["unique_ips"] == 3
    assert summary["unique_models"] == 2
    assert summary["unique_usernames"] == 2  # requests without a user name do not count
    assert summary["ip_counts"] == {"10.0.0.1": 2, "10.0.0.2": 1, "10.0.0.3": 1}
    assert summary["model_counts"] == {"a": 3, "b": 1}
    assert summary["username_counts"] == {"alice": 2, "bob": 1}
    assert summary["by_server"] == {"PC1": 3, "PC2": 1}


def test_counters_are_ordered_most_common_first(stats):
    record(stats, model="rare")
    for _ in range(3):
        record(stats, model="popular")

    assert list(stats.summary()["model_counts"]) == ["popular", "rare"]


def test_per_minute_buckets_cover_the_last_hour_ending_at_the_current_minute(stats, clock):
    clock.advance(30)  # 09:00:30
    record(stats)
    clock.advance(60)  # 09:01:30
    record(stats)
    record(stats)

    buckets = stats.summary()["per_minute"]

    assert len(buckets) == 60
    assert (buckets[-1]["minute"], buckets[-1]["count"]) == ("2026-11-27T09:01:00.000Z", 2)
    assert (buckets[-2]["minute"], buckets[-2]["count"]) == ("2026-11-27T09:00:00.000Z", 1)
    assert buckets[0]["minute"] == "2026-11-27T08:02:00.000Z"
    minutes = [b["minute"] for b in buckets]
    assert minutes == sorted(minutes) and len(set(minutes)) == 60


def test_records_older_than_the_window_drop_out(stats, clock):
    record(stats, model="old", user="ghost")
    clock.advance(HOUR - 60)
    record(stats, model="new")

    assert stats.summary()["total_requests"] == 2

    clock.advance(60)  # the first record is now exactly an hour old

    summary = stats.summary()
    assert summary["total_requests"] == 1
    assert summary["model_counts"] == {"new": 1}
    assert summary["username_counts"] == {}
    assert sum(b["count"] for b in summary["per_minute"]) == 1


def test_recent_lists_the_last_twenty_newest_first(stats, clock):
    for index in range(25):
        record(stats, ip=f"10.0.0.{index}", user="u" if index == 24 else None, instance="m-2", reason="idle")
        clock.advance(1)

    recent = stats.summary()["recent"]

    assert len(recent) == 20
    assert recent[0].items() >= {
        "at": "2026-11-27T09:00:24.000Z",
        "ip": "10.0.0.24",
        "user": "u",
        "model": "m",
        "server": "PC1",
        "instance": "m-2",
        "reason": "idle",
    }.items()
    assert recent[-1]["ip"] == "10.0.0.5"


def test_window_length_is_configurable(clock):
    stats = AccessStats(120.0, clock)
    record(stats)
    clock.advance(119)
    assert stats.summary()["total_requests"] == 1

    clock.advance(1)
    summary = stats.summary()
    assert summary["total_requests"] == 0
    assert len(summary["per_minute"]) == 2


def test_the_log_is_bounded_by_max_records(clock):
    stats = AccessStats(HOUR, clock, max_records=3)
    for model in ["a", "b", "c", "d"]:
        record(stats, model=model)

    summary = stats.summary()
    assert summary["total_requests"] == 3
    assert set(summary["model_counts"]) == {"b", "c", "d"}



def test_per_minute_buckets_carry_ttft_percentiles_and_generation_speed(clock):
    stats = AccessStats(3600.0, clock)
    for ttft in (0.1, 0.2, 0.3, 0.4):
        stats.record("ip", "m", None, "PC1", "m", "idle", status=200, ttft_s=ttft,
                     duration_s=ttft + 2.0, completion_tokens=50, generation_s=2.0)
    bucket = stats.summary()["per_minute"][-1]
    assert bucket["count"] == 4
    assert (bucket["ttft_ms_p50"], bucket["ttft_ms_p99"]) == (300.0, 400.0)
    assert bucket["tokens"] == 200 and bucket["tokens_per_s"] == 25.0
    assert stats.summary()["recent"][0]["ttft_ms"] == 400.0


def test_the_prompt_cache_hit_ratio_is_cached_over_prompt_tokens_per_server_and_model(clock):
    stats = AccessStats(HOUR, clock)
    stats.record("ip", "llama-a", None, "PC1", "llama-a", "prefix", prompt_tokens=1000, cached_tokens=900)
    stats.record("ip", "llama-a", None, "PC2", "llama-a", "least-loaded", prompt_tokens=1000, cached_tokens=0)
    stats.record("ip", "qwen-c", None, "PC1", "qwen-c", "sticky", prompt_tokens=200, cached_tokens=100)
    stats.record("ip", "qwen-c", None, "PC1", "qwen-c", "sticky", prompt_tokens=50)  # cached not reported
    stats.record("ip", "qwen-c", None, "PC1", "qwen-c", "sticky")  # no usage at all

    cache = stats.summary()["prompt_cache"]
    last = cache["last_5m"]
    assert last["total"] == {"requests": 3, "prompt_tokens": 2200, "cached_tokens": 1000, "hit_ratio": 0.4545}
    assert last["by_server"]["PC1"] == {"requests": 2, "prompt_tokens": 1200, "cached_tokens": 1000,
                                        "hit_ratio": 0.8333}
    assert last["by_server"]["PC2"]["hit_ratio"] == 0.0
    assert last["by_model"]["llama-a"]["hit_ratio"] == 0.45 and last["by_model"]["qwen-c"]["hit_ratio"] == 0.5
    assert cache["last_1h"] == last
    assert cache["window_s"] == {"last_5m": 300.0, "last_1h": 3600.0}


def test_the_five_minute_hit_ratio_forgets_what_the_hour_remembers(clock):
    stats = AccessStats(HOUR, clock)
    stats.record("ip", "m", None, "PC1", "m", "prefix", prompt_tokens=100, cached_tokens=100)
    clock.advance(301)
    stats.record("ip", "m", None, "PC1", "m", "prefix", prompt_tokens=100, cached_tokens=0)

    cache = stats.summary()["prompt_cache"]
    assert cache["last_5m"]["total"]["hit_ratio"] == 0.0
    assert cache["last_1h"]["total"]["hit_ratio"] == 0.5
    assert cache["last_1h"]["by_server"]["PC1"]["requests"] == 2


def test_without_reported_prompts_the_hit_ratio_is_unknown_not_zero(clock):
    stats = AccessStats(HOUR, clock)
    stats.record("ip", "m", None, "PC1", "m", "prefix", completion_tokens=5)
    total = stats.summary()["prompt_cache"]["last_5m"]["total"]
    assert total == {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "hit_ratio": None}


def test_the_old_tools_keys_are_all_still_there(clock):
    summary = AccessStats(HOUR, clock).summary()
    assert {"total_requests", "unique_ips", "unique_models", "unique_usernames", "ip_counts", "model_counts",
            "username_counts", "time_series", "retention_hours", "oldest_log", "newest_log"} <= summary.keys()
