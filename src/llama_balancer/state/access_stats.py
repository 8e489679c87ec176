"""The last hour of routed requests, for /access-log-stats and the dashboard charts."""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from .clock import Clock, iso_utc


@dataclass(frozen=True)
class AccessRecord:
    wall: float
    ip: str
    model: str
    user: str | None
    server: str
    instance: str
    reason: str


class AccessStats:
    def __init__(self, window_s: float, clock: Clock, max_records: int = 200_000) -> None:
        self.window_s = window_s
        self._clock = clock
        self._records: deque[AccessRecord] = deque(maxlen=max_records)

    def record(self, ip: str, model: str, user: str | None, server: str, instance: str, reason: str) -> None:
        self._records.append(AccessRecord(self._clock.wall(), ip, model, user, server, instance, reason))

    def summary(self) -> dict[str, Any]:
        now = self._clock.wall()
        self._trim(now)
        records = list(self._records)
        per_minute: Counter[int] = Counter(int(r.wall // 60) for r in records)
        first_minute = int((now - self.window_s) // 60) + 1
        last_minute = int(now // 60)
        users = [r.user for r in records if r.user]
        return {
            "window_seconds": self.window_s,
            "total": len(records),
            "unique_ips": len({r.ip for r in records}),
            "unique_models": len({r.model for r in records}),
            "unique_users": len(set(users)),
            "by_ip": dict(Counter(r.ip for r in records).most_common()),
            "by_model": dict(Counter(r.model for r in records).most_common()),
            "by_user": dict(Counter(users).most_common()),
            "by_server": dict(Counter(r.server for r in records).most_common()),
            "per_minute": [
                {"minute": iso_utc(m * 60.0), "count": per_minute.get(m, 0)}
                for m in range(first_minute, last_minute + 1)
            ],
            "recent": [
                {"at": iso_utc(r.wall), "ip": r.ip, "user": r.user, "model": r.model,
                 "server": r.server, "instance": r.instance, "reason": r.reason}
                for r in records[-20:][::-1]
            ],
            "now": iso_utc(now),
        }

    def _trim(self, now: float) -> None:
        while self._records and self._records[0].wall <= now - self.window_s:
            self._records.popleft()
