"""The health agent's GPU sampling: one sample per interval, the 5 s max window, the 50 %
threshold, and samplers that fail without breaking anything."""
from __future__ import annotations

import asyncio

import pytest

from llama_balancer.core.health import GpuWindow
from llama_balancer.io.gpu import (GpuMonitor, NoGpuSampler, NvmlSampler, WindowsGpuSampler,
                                   detect_sampler, max_engine_utilisation)


class Scripted:
    """Answers the next value of a script each time it is sampled."""

    name = "scripted"

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)
        self.calls = 0

    def sample(self) -> float:
        self.calls += 1
        value = self.values.pop(0)
        if isinstance(value, Exception):
            raise value
        return value


def test_scripted_samples_one_second_apart_keep_the_max_of_the_last_five_seconds():
    monitor = GpuMonitor(Scripted([10, 70, 20, 20, 20, 20, 20, 20]), GpuWindow(5.0, 50.0), 1.0)
    reports = []
    for second in range(8):
        monitor.sample_once(float(second))
        reports.append(monitor.window.report(float(second)))
    assert [r["gpu_util_max5s"] for r in reports] == [10, 70, 70, 70, 70, 70, 20, 20]
    assert [r["status"] for r in reports] == ["idle"] + ["busy"] * 5 + ["idle"] * 2
    assert reports[0]["window_seconds"] == 5.0


@pytest.mark.parametrize("util, status", [(49.9, "idle"), (50.0, "busy"), (100.0, "busy"), (0.0, "idle")])
def test_busy_starts_at_fifty_percent(util, status):
    window = GpuWindow(5.0, 50.0)
    window.add(0.0, util)
    assert window.report(0.5)["status"] == status


def test_a_failing_sample_counts_as_zero_and_sampling_goes_on(caplog):
    monitor = GpuMonitor(Scripted([RuntimeError("NVML gone"), RuntimeError("again"), 60.0]), GpuWindow(), 1.0)
    monitor.sample_once(0.0)
    monitor.sample_once(1.0)
    assert monitor.window.report(1.0)["gpu_util_max5s"] == 0.0
    monitor.sample_once(2.0)
    assert monitor.window.report(2.0)["status"] == "busy"
    assert sum("NVML gone" in r.message for r in caplog.records) == 1  # logged once, not per sample


async def test_the_monitor_task_samples_once_per_interval():
    sampler = Scripted([5.0] * 100)
    monitor = GpuMonitor(sampler, GpuWindow(), 0.05)
    monitor.start()
    await asyncio.sleep(0.26)
    await monitor.stop()
    assert 4 <= sampler.calls <= 7


class FakeNvml:
    """Stands in for pynvml's module interface (no NVIDIA driver on this machine)."""

    class Rates:
        def __init__(self, gpu: int) -> None:
            self.gpu = gpu

    def __init__(self, utils: list[int], fail_init: bool = False) -> None:
        self.utils = utils
        self.fail_init = fail_init

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise OSError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.utils)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> "FakeNvml.Rates":
        return self.Rates(self.utils[handle])


def test_nvml_sampler_reports_the_busiest_gpu():
    assert NvmlSampler(FakeNvml([3, 91, 40])).sample() == 91.0


def test_nvml_sampler_refuses_to_start_without_gpus_or_library():
    with pytest.raises(RuntimeError):
        NvmlSampler(FakeNvml([]))
    with pytest.raises(OSError):
        NvmlSampler(FakeNvml([1], fail_init=True))


def test_detection_falls_back_to_no_gpu_when_nothing_is_available():
    # On this machine there is neither an NVIDIA driver nor win32pdh.
    sampler = detect_sampler("auto")
    assert sampler.name in ("nvml", "none")
    assert isinstance(detect_sampler("none"), NoGpuSampler)
    assert NoGpuSampler().sample() == 0.0


def test_windows_engine_counters_are_summed_per_gpu_and_engine_then_maxed():
    counters = [
        ("pid_1_luid_0x0_phys_0_eng_0_engtype_3D", 30.0),
        ("pid_2_luid_0x0_phys_0_eng_0_engtype_3D", 25.0),
        ("pid_2_luid_0x0_phys_0_eng_1_engtype_Copy", 5.0),
        ("pid_3_luid_0x0_phys_1_eng_0_engtype_Compute_0", 40.0),
    ]
    assert max_engine_utilisation(counters) == 55.0
    assert max_engine_utilisation([]) == 0.0
    assert max_engine_utilisation([("pid_1_phys_0_engtype_3D", 70.0), ("pid_2_phys_0_engtype_3D", 60.0)]) == 100.0


class FakePdh:
    PDH_FMT_DOUBLE = 0x200

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values
        self.collected = 0

    def OpenQuery(self):
        return "query"

    def AddEnglishCounter(self, query, path):
        assert path == r"\GPU Engine(*)\Utilization Percentage"
        return "counter"

    def CollectQueryData(self, query):
        self.collected += 1

    def GetFormattedCounterArray(self, counter, fmt):
        return self.values


def test_windows_sampler_reads_the_gpu_engine_counter_array():
    pdh = FakePdh({"pid_1_phys_0_eng_0_engtype_3D": 64.0})
    sampler = WindowsGpuSampler(pdh)
    assert sampler.sample() == 64.0
    assert pdh.collected == 2  # primed once at start, as PDH rate counters need
