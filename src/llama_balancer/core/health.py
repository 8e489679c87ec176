"""Health signals as pure data: parsing an agent's ``/llmhealth`` answer, judging a backend
over its last samples, and the local GPU-utilisation window the agent itself serves.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Literal

import orjson

Status = Literal["idle", "busy", "invalid"]


@dataclass(frozen=True)
class HealthSample:
    """One poll: ``invalid`` means error or timeout; anything unrecognised counts as busy."""

    status: Status
    gpu_util: float | None = None
    detail: str | None = None


def parse_llmhealth(http_status: int, body: bytes) -> HealthSample:
    """Read an agent's answer: plain ``idle``/``busy`` or JSON with ``status``."""
    if http_status != 200:
        return HealthSample("invalid", detail=f"HTTP {http_status}")
    text = body.strip()
    if text in (b"idle", b"busy"):
        return HealthSample(text.decode())  # type: ignore[arg-type]
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return HealthSample("busy", detail="unrecognised answer")
    if not isinstance(data, dict):
        return HealthSample("busy", detail="unrecognised answer")
    util = data.get("gpu_util_max5s")
    util = float(util) if isinstance(util, (int, float)) and not isinstance(util, bool) else None
    status = "idle" if data.get("status") == "idle" else "busy"
    return HealthSample(status, util)


def parse_agent_probe(http_status: int, body: bytes) -> HealthSample | None:
    """An ``/llmhealth`` answer when it really comes from an agent, else None.

    Used where no ``kind`` is configured: a 404 (a plain llama-server on that port), another
    4xx or a body that is neither ``idle``/``busy`` nor JSON with such a ``status`` means no
    agent runs there, not that the machine is busy. A 5xx is invalid, as the old tool read it:
    a broken agent, or a llama-server that is loading its model (503 on every path). Which of
    the two it was is not known yet, so the caller must not take it for an agent's answer
    (:func:`is_agent_answer`).
    """
    if http_status >= 500:  # something serves /llmhealth and fails: a broken agent, or a loading model server
        return HealthSample("invalid", detail=f"HTTP {http_status}")
    if http_status != 200:
        return None
    text = body.strip()
    if text in (b"idle", b"busy"):
        return HealthSample(text.decode())  # type: ignore[arg-type]
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("status") not in ("idle", "busy"):
        return None
    return parse_llmhealth(http_status, body)


def is_agent_answer(sample: HealthSample | None) -> bool:
    """Whether a probe's sample proves an agent runs there: only a real idle/busy answer does
    (a 5xx may be a model server loading; once taken for an agent, a restarted llama-server's
    404 on /llmhealth kept it invalid for good)."""
    return sample is not None and sample.status != "invalid"


_SEVERITY = {"idle": 0, "busy": 1, "invalid": 2}


def combine(model_side: HealthSample, agent: HealthSample) -> HealthSample:
    """One sample from both signals of a machine: the model server's own and its agent's GPU
    load. The worse status wins (a dead server is invalid whatever its GPU says; a busy GPU
    makes an idle server busy); the GPU figure comes from the agent."""
    worse = agent if _SEVERITY[agent.status] > _SEVERITY[model_side.status] else model_side
    details = [d for d in (model_side.detail, agent.detail and f"agent: {agent.detail}") if d]
    return HealthSample(worse.status, agent.gpu_util, "; ".join(details) or None)


def judge(samples: Iterable[HealthSample]) -> Status:
    """Conservative verdict: any invalid -> invalid; none yet -> busy; any busy -> busy."""
    seen = False
    busy = False
    for sample in samples:
        if sample.status == "invalid":
            return "invalid"
        seen = True
        busy = busy or sample.status == "busy"
    return "busy" if busy or not seen else "idle"


class GpuWindow:
    """Maximum GPU utilisation over the last ``window_s`` seconds of (time, percent) samples."""

    def __init__(self, window_s: float = 5.0, threshold: float = 50.0) -> None:
        self.window_s = window_s
        self.threshold = threshold
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, util: float) -> None:
        self._samples.append((now, util))
        self._trim(now)

    def max_util(self, now: float) -> float:
        self._trim(now)
        return max((util for _, util in self._samples), default=0.0)

    def report(self, now: float) -> dict:
        """The ``/llmhealth`` body: busy when the window's maximum reaches the threshold."""
        util = self.max_util(now)
        status = "busy" if util >= self.threshold else "idle"
        window = int(self.window_s) if float(self.window_s).is_integer() else self.window_s
        return {"status": status, "gpu_util_max5s": round(util, 1), "window_seconds": window}

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0][0] <= now - self.window_s:
            self._samples.popleft()
