"""Time as an object the app owns, so tests can drive TTLs and windows without sleeping."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def wall(self) -> float: ...


class SystemClock:
    """The process's clocks; the methods are the C functions themselves (read on every request)."""

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)


def iso_minute(minute: int) -> str:
    """``2026-11-27T09:00:00Z``: the start of a minute (minutes since the epoch)."""
    return datetime.fromtimestamp(minute * 60, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:00Z")


def iso_utc(wall: float) -> str:
    """``2026-11-27T09:00:00.123Z``: ISO-8601 with a Z, as the old tool's snapshot had."""
    stamp = datetime.fromtimestamp(wall, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
