"""How often a line that may repeat at request rate is written: pure, time passed in.

A retry, a 429 or an unknown model name can happen a thousand times a second; the operator
needs the first ones and a count of the rest, not a flood. ``Throttle`` admits a burst of
lines per key, then one per ``1/rate`` seconds, and says how many it held back since the
last line it admitted. ``Seen`` remembers names already reported (bounded: names come from
clients).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float
    held_back: int = 0


class Throttle:
    """A token bucket per key: ``burst`` lines at once, refilled at ``rate`` per second."""

    def __init__(self, rate: float = 1.0, burst: int = 10, keys: int = 1024) -> None:
        self.rate, self.burst, self.keys = rate, burst, keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def admit(self, key: str, now: float) -> int | None:
        """None when this line is held back; else how many were held back before it."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self.keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens < 1.0:
            bucket.held_back += 1
            return None
        bucket.tokens -= 1.0
        held, bucket.held_back = bucket.held_back, 0
        return held


class Seen:
    """Names reported once; the oldest are forgotten past ``size`` (then reported again)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._names: OrderedDict[str, None] = OrderedDict()

    def first(self, name: str) -> bool:
        """True the first time ``name`` is seen (while remembered)."""
        if name in self._names:
            self._names.move_to_end(name)
            return False
        self._names[name] = None
        if len(self._names) > self.size:
            self._names.popitem(last=False)
        return True
