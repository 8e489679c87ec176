"""core/health.py: the /llmhealth answer, the conservative verdict, the local GPU window."""
from __future__ import annotations

import pytest

from llama_balancer.core.health import GpuWindow, HealthSample, judge, parse_llmhealth

IDLE = HealthSample("idle")
BUSY = HealthSample("busy")
INVALID = HealthSample("invalid")


# --- parse_llmhealth ----------------------------------------------------------------------


@pytest.mark.parametrize(("body", "status"), [(b"idle", "idle"), (b"busy", "busy"), (b"  idle\r\n", "idle")])
def test_plain_text_answer_is_read_as_is(body, status):
    sample = parse_llmhealth(200, body)

    assert sample.status == status
    assert sample.gpu_util is None


def test_json_answer_gives_status_and_utilisation():
    sample = parse_llmhealth(200, b'{"status": "idle", "gpu_util_max5s": 12.5, "window_seconds": 5}')

    assert sample == HealthSample("idle", 12.5)


def test_json_busy_answer_is_busy_with_integer_utilisation_as_float():
    sample = parse_llmhealth(200, b'{"status": "busy", "gpu_util_max5s": 97}')

    assert sample.status == "busy"
    assert sample.gpu_util == 97.0
    assert isinstance(sample.gpu_util, float)


def test_json_without_utilisation_has_none():
    assert parse_llmhealth(200, b'{"status": "idle"}') == HealthSample("idle", None)


@pytest.mark.parametrize("util", ['"12"', "true", "null", "[1]"])
def test_non_numeric_utilisation_is_dropped(util):
    sample = parse_llmhealth(200, b'{"status": "idle", "gpu_util_max5s": ' + util.encode() + b"}")

    assert sample.status == "idle"
    assert sample.gpu_util is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"ok",
        b"IDLE",
        b"<html>idle</html>",
        b'"idle"',
        b"[]",
        b"42",
        b'{"status": "IDLE"}',
        b'{"status": "sleeping"}',
        b"{}",
        b"\xff\xfe",
    ],
)
def test_anything_unrecognised_counts_as_busy(body):
    assert parse_llmhealth(200, body).status == "busy"


@pytest.mark.parametrize("http_status", [204, 301, 404, 500, 503])
def test_a_non_200_answer_is_invalid_even_with_an_idle_body(http_status):
    sample = parse_llmhealth(http_status, b"idle")

    assert sample.status == "invalid"
    assert sample.detail == f"HTTP {http_status}"


# --- judge --------------------------------------------------------------------------------


def test_no_samples_yet_is_busy():
    assert judge([]) == "busy"


def test_all_idle_is_idle():
    assert judge([IDLE] * 5) == "idle"


def test_any_busy_sample_makes_the_backend_busy():
    assert judge([IDLE, IDLE, BUSY, IDLE, IDLE]) == "busy"


@pytest.mark.parametrize("position", range(5))
def test_any_invalid_sample_makes_the_backend_invalid_wherever_it_is(position):
    samples = [BUSY, IDLE, BUSY, IDLE, IDLE]
    samples[position] = INVALID

    assert judge(samples) == "invalid"


def test_invalid_wins_over_busy_and_idle_together():
    assert judge([BUSY, INVALID, IDLE]) == "invalid"


def test_judge_accepts_any_iterable():
    assert judge(iter([IDLE, IDLE])) == "idle"


# --- GpuWindow ----------------------------------------------------------------------------


def test_empty_window_reports_idle_at_zero():
    assert GpuWindow().report(100.0) == {"status": "idle", "gpu_util_max5s": 0.0, "window_seconds": 5.0}


def test_window_reports_the_maximum_over_the_last_five_seconds():
    window = GpuWindow()
    for second, util in enumerate([10.0, 70.0, 20.0, 5.0, 30.0]):
        window.add(100.0 + second, util)

    assert window.max_util(104.0) == 70.0
    assert window.report(104.0)["status"] == "busy"


def test_exactly_the_threshold_is_busy():
    window = GpuWindow()
    window.add(100.0, 50.0)

    assert window.report(100.0) == {"status": "busy", "gpu_util_max5s": 50.0, "window_seconds": 5.0}


def test_just_under_the_threshold_is_idle():
    window = GpuWindow()
    window.add(100.0, 49.9)

    assert window.report(100.0) == {"status": "idle", "gpu_util_max5s": 49.9, "window_seconds": 5.0}


def test_old_samples_age_out_of_the_window():
    window = GpuWindow()
    window.add(100.0, 95.0)
    window.add(101.0, 10.0)

    assert window.max_util(104.9) == 95.0
    assert window.max_util(105.0) == 10.0  # the peak at t=100 is now 5 s old
    assert window.report(105.0)["status"] == "idle"
    assert window.max_util(106.0) == 0.0


def test_a_busy_peak_keeps_the_host_busy_for_five_samples_then_it_recovers():
    window = GpuWindow()
    statuses = []
    for second, util in enumerate([90.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]):
        window.add(float(second), util)
        statuses.append(window.report(float(second))["status"])

    assert statuses == ["busy"] * 5 + ["idle"] * 2


def test_window_length_and_threshold_are_configurable():
    window = GpuWindow(window_s=2.0, threshold=80.0)
    window.add(0.0, 79.0)
    window.add(1.0, 60.0)

    assert window.report(1.0) == {"status": "idle", "gpu_util_max5s": 79.0, "window_seconds": 2.0}
    assert window.max_util(2.0) == 60.0


def test_reported_utilisation_is_rounded_to_one_decimal():
    window = GpuWindow()
    window.add(0.0, 33.333)

    assert window.report(0.0)["gpu_util_max5s"] == 33.3
