"""Shared helpers for the unit tests: a clock the tests set by hand."""
from __future__ import annotations

import pytest

# 2026-11-27T09:00:00Z, on a minute boundary so per-minute buckets are easy to reason about.
WALL_START = 1795770000.0


class FakeClock:
    """A ``Clock`` whose monotonic and wall times move only when a test says so."""

    def __init__(self, mono: float = 1000.0, wall: float = WALL_START) -> None:
        self.mono = mono
        self.wall_time = wall

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_time

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_time += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
