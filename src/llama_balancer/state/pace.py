"""How long a backend's slots stay busy with our requests, learnt as they end.

The cache-aware hold (core/placement.py) waits for a busy slot that holds a request's prompt
only when that slot should free soon: a running average of how long one of our pinned
requests keeps its slot, minus how long the current one has run, says when.
"""
from __future__ import annotations

from dataclasses import dataclass

WEIGHT = 0.2  # of each new observation: recent behaviour counts, one outlier does not dominate


@dataclass
class Pace:
    occupancy_s: float | None = None  # a pinned request's time on its slot

    def observe_occupancy(self, seconds: float) -> None:
        if seconds > 0:
            self.occupancy_s = seconds if self.occupancy_s is None else \
                self.occupancy_s + WEIGHT * (seconds - self.occupancy_s)
