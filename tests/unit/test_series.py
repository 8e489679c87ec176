"""state/series.py: the dashboard's short window per backend (gauges, TTFT, tokens/s)."""
from __future__ import annotations

import pytest

from llama_balancer.state.series import TTFT_SAMPLES, BackendSeries, Gauges

T0 = 1000.0  # a bucket boundary at 2 s


def test_each_sample_fills_the_bucket_of_its_time_and_the_snapshot_ends_at_now():
    series = BackendSeries(2.0)
    series.sample(T0 + 0.1, {"PC1": Gauges(3, 1, 2, 4)})
    series.sample(T0 + 2.1, {"PC1": Gauges(1, 0, 1, 4)})

    snap = series.snapshot(T0 + 2.5)
    pc1 = snap["backends"]["PC1"]
    assert snap["points"] == 450 and snap["sample_s"] == 2.0 and snap["end_index"] == 501
    assert all(len(column) == 450 for column in pc1.values())
    assert pc1["inflight"][-2:] == [3, 1] and pc1["queued"][-2:] == [1, 0]
    assert pc1["slots_busy"][-2:] == [2, 1] and pc1["slots_total"][-2:] == [4, 4]
    assert pc1["inflight"][:-2] == [None] * 448  # never sampled: gaps, not zeros
    assert pc1["tokens_per_s"][-2:] == [0.0, 0.0]  # sampled and nothing generated: zero


def test_the_window_is_fifteen_minutes_and_older_buckets_drop_out():
    series = BackendSeries(2.0)
    series.sample(T0, {"PC1": Gauges(7, 0)})
    series.sample(T0 + 898, {"PC1": Gauges(1, 0)})
    assert series.snapshot(T0 + 898)["backends"]["PC1"]["inflight"][0] == 7

    series.sample(T0 + 900, {"PC1": Gauges(2, 0)})
    inflight = series.snapshot(T0 + 900)["backends"]["PC1"]["inflight"]
    assert 7 not in inflight and inflight[-2:] == [1, 2]


def test_ttft_percentiles_come_from_streams_whose_first_token_came_in_the_bucket():
    series = BackendSeries(2.0)
    series.sample(T0, {"PC1": Gauges(0, 0)})
    for ttft in (0.1, 0.2, 0.3, 0.4, 1.0):  # first bytes at T0 + 0.5, answers ending 10 s later
        series.observe("PC1", T0 + 10.5, T0 + 0.5, ttft, None, None)
    series.observe("PC1", T0 + 10.5, T0 + 0.5, None, None, None)  # a plain answer: no TTFT

    pc1 = series.snapshot(T0 + 11)["backends"]["PC1"]
    at = -6  # the bucket of T0, five buckets before the one of T0 + 11
    assert (pc1["ttft_ms_p50"][at], pc1["ttft_ms_p95"][at]) == (300.0, 1000.0)
    assert pc1["ttft_ms_p50"][-1] is None


def test_tokens_spread_over_the_generation_so_tokens_per_s_is_the_output_rate():
    series = BackendSeries(2.0)
    series.sample(T0, {"PC1": Gauges(1, 0)})
    # 80 tokens generated from T0 to T0 + 4: 20 tokens/s in each of two buckets
    series.observe("PC1", T0 + 4.0, T0, 0.0, 80, T0)
    pc1 = series.snapshot(T0 + 4.0)["backends"]["PC1"]
    assert pc1["tokens_per_s"][-3:] == [20.0, 20.0, None]


def test_tokens_of_an_answer_with_no_generation_span_go_to_its_last_bucket():
    series = BackendSeries(2.0)
    series.sample(T0, {"PC1": Gauges(1, 0)})
    series.observe("PC1", T0 + 1.0, None, None, 10, None)
    assert series.snapshot(T0 + 1.0)["backends"]["PC1"]["tokens_per_s"][-1] == 5.0


def test_a_generation_longer_than_the_window_counts_only_inside_it():
    series = BackendSeries(2.0, span_s=10.0)
    series.sample(T0 + 100, {"PC1": Gauges(1, 0)})
    series.observe("PC1", T0 + 100, T0, 0.1, 1000, T0)  # 10 tokens/s for 100 s
    pc1 = series.snapshot(T0 + 100)["backends"]["PC1"]
    assert pc1["tokens_per_s"] == [10.0, 10.0, 10.0, 10.0, 0.0]
    assert pc1["ttft_ms_p50"] == [None] * 5  # its first token came before the window


def test_backends_no_longer_configured_are_forgotten_and_unknown_ones_ignored():
    series = BackendSeries(2.0)
    series.sample(T0, {"PC1": Gauges(1, 0), "PC2": Gauges(2, 0)})
    series.sample(T0 + 2, {"PC1": Gauges(1, 0)})
    series.observe("ghost", T0 + 2, T0 + 2, 0.1, 5, T0)
    assert set(series.snapshot(T0 + 2)["backends"]) == {"PC1"}


def test_ttft_samples_per_bucket_are_capped_by_a_reservoir():
    series = BackendSeries(2.0)
    series.sample(T0, {"PC1": Gauges(0, 0)})
    for _ in range(TTFT_SAMPLES * 4):
        series.observe("PC1", T0 + 1, T0 + 1, 0.5, None, None)
    series.observe("PC1", T0 + 1, T0 + 1, 0.1, None, None)
    bucket = series._by_server["PC1"][500]
    assert len(bucket.ttfts) == TTFT_SAMPLES and bucket.seen == TTFT_SAMPLES * 4 + 1


def test_a_new_resolution_starts_a_fresh_window():
    series = BackendSeries(2.0)
    series.sample(T0, {"PC1": Gauges(1, 0)})
    series.resize(2.0)
    assert series.snapshot(T0)["backends"]["PC1"]["inflight"][-1] == 1
    series.resize(5.0)
    snap = series.snapshot(T0)
    assert snap["points"] == 180 and snap["backends"] == {}


@pytest.mark.parametrize("sample_s, points", [(0.5, 1800), (2.0, 450), (60.0, 15)])
def test_points_cover_fifteen_minutes_at_any_resolution(sample_s, points):
    assert BackendSeries(sample_s).points == points
