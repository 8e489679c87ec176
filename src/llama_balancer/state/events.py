"""What went wrong lately, for the dashboard's errors panel: counts per group and kind over
the last 5 minutes and the last hour, in 10-second buckets (monotonic time, passed in).

Groups: ``4xx`` and ``5xx`` by kind (the balancer's own error code, ``upstream_<how>`` when a
backend could not be reached, ``backend_<status>`` for a backend's own error answer),
``outcomes`` (``client_closed``, ``broken_answer``: what is not a status code), ``retries``
(by server and kind), ``failovers`` (from -> to), ``resumes`` (streams broken mid-way, by
server and outcome: resumed, failed, not_resumable), ``circuit_openings`` (by server) and
``queue_timeouts`` (by model).
"""
from __future__ import annotations

from collections import Counter, deque
from typing import Any

BUCKET_S = 10.0
WINDOWS = {"last_5m": 300.0, "last_1h": 3600.0}
MAX_KINDS = 64  # distinct kinds per group and bucket; more count as "(other)"


class EventCounts:
    def __init__(self) -> None:
        self._buckets: deque[tuple[int, Counter[tuple[str, str]]]] = deque()

    def add(self, now: float, group: str, kind: str, count: int = 1) -> None:
        if count <= 0:
            return
        index = int(now // BUCKET_S)
        if not self._buckets or self._buckets[-1][0] != index:
            if self._buckets and self._buckets[-1][0] > index:  # a late one: the newest bucket takes it
                index = self._buckets[-1][0]
            else:
                self._buckets.append((index, Counter()))
            self._trim(index)
        counts = self._buckets[-1][1]
        key = (group, kind)
        if key not in counts and sum(1 for g, _ in counts if g == group) >= MAX_KINDS:
            key = (group, "(other)")
        counts[key] += count

    def summary(self, now: float) -> dict[str, Any]:
        """``{"last_5m": {group: {kind: n}}, "last_1h": {...}, "window_s": {...}}``, most common first."""
        index = int(now // BUCKET_S)
        self._trim(index)
        out: dict[str, Any] = {"window_s": dict(WINDOWS)}
        for name, seconds in WINDOWS.items():
            oldest = index - int(seconds // BUCKET_S) + 1
            total: Counter[tuple[str, str]] = Counter()
            for bucket_index, counts in self._buckets:
                if bucket_index >= oldest:
                    total.update(counts)
            groups: dict[str, dict[str, int]] = {}
            for (group, kind), count in total.most_common():
                groups.setdefault(group, {})[kind] = count
            out[name] = groups
        return out

    def _trim(self, index: int) -> None:
        oldest = index - int(max(WINDOWS.values()) // BUCKET_S) + 1
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()
