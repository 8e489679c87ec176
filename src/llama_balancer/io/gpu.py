"""GPU utilisation samplers for the health agent's ``/llmhealth``.

Three implementations behind one interface: NVML (every GPU, the highest utilisation),
the Windows ``GPU Engine`` performance counters, and none (always 0 %). A missing or
failing NVML never breaks the balancer: it falls back to the next choice and logs once.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Iterable, Protocol

from ..core.health import GpuWindow

log = logging.getLogger("llama_balancer.gpu")


class GpuSampler(Protocol):
    name: str

    def sample(self) -> float:
        """The highest utilisation (0-100) over this machine's GPUs right now."""


class NoGpuSampler:
    name = "none"

    def sample(self) -> float:
        return 0.0


class NvmlSampler:
    """NVML through ``nvidia-ml-py`` (module ``pynvml``); raises at construction if absent."""

    name = "nvml"

    def __init__(self, nvml: Any | None = None) -> None:
        if nvml is None:
            import pynvml as nvml  # type: ignore[no-redef]
        self._nvml = nvml
        nvml.nvmlInit()
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        if not self._handles:
            raise RuntimeError("NVML reports no GPUs")

    def sample(self) -> float:
        return float(max(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles))


_ENGINE = re.compile(r"phys_(\d+).*engtype_([^)\\]+)", re.IGNORECASE)


def max_engine_utilisation(counters: Iterable[tuple[str, float]]) -> float:
    """Windows counter instances -> per (GPU, engine type) sums -> the maximum, capped at 100."""
    totals: dict[tuple[str, str], float] = {}
    for instance, value in counters:
        found = _ENGINE.search(instance)
        key = (found.group(1), found.group(2)) if found else ("?", instance)
        totals[key] = totals.get(key, 0.0) + float(value)
    return min(100.0, max(totals.values(), default=0.0))


class WindowsGpuSampler:
    """``\\GPU Engine(*)\\Utilization Percentage`` through pywin32's ``win32pdh``."""

    name = "windows-gpu-engine"
    _PATH = r"\GPU Engine(*)\Utilization Percentage"

    def __init__(self, pdh: Any | None = None) -> None:
        if pdh is None:
            import win32pdh as pdh  # type: ignore[no-redef]
        self._pdh = pdh
        self._query = pdh.OpenQuery()
        self._counter = pdh.AddEnglishCounter(self._query, self._PATH)
        pdh.CollectQueryData(self._query)

    def sample(self) -> float:
        pdh = self._pdh
        pdh.CollectQueryData(self._query)
        values = pdh.GetFormattedCounterArray(self._counter, pdh.PDH_FMT_DOUBLE)
        return max_engine_utilisation(values.items())


def detect_sampler(preference: str = "auto") -> GpuSampler:
    """The first sampler that works: NVML, then Windows counters, then none."""
    choices = {"nvml": [NvmlSampler], "windows": [WindowsGpuSampler], "none": [],
               "auto": [NvmlSampler, WindowsGpuSampler]}[preference]
    for factory in choices:
        try:
            return factory()
        except Exception as exc:  # ImportError, NVMLError, no GPU ...
            log.info("GPU sampler %s unavailable: %s", factory.name, exc)
    return NoGpuSampler()


class GpuMonitor:
    """Samples once per interval into a window; a failing sample counts as 0 % and is logged once."""

    def __init__(self, sampler: GpuSampler, window: GpuWindow, interval_s: float = 1.0) -> None:
        self.sampler = sampler
        self.window = window
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._warned = False

    def sample_once(self, now: float) -> None:
        try:
            util = self.sampler.sample()
        except Exception as exc:
            if not self._warned:
                log.warning("GPU sampler %s failed, counting 0%%: %s", self.sampler.name, exc)
                self._warned = True
            util = 0.0
        self.window.add(now, util)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gpu-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.sample_once(loop.time())
            await asyncio.sleep(self.interval_s)
