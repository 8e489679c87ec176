"""The last hour of routed requests, for /access-log-stats and the dashboard charts."""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from ..core.frozen import quick_init
from .clock import Clock, iso_minute, iso_utc


@quick_init
@dataclass(frozen=True)
class AccessRecord:
    wall: float
    ip: str
    model: str
    user: str | None
    server: str
    instance: str
    reason: str
    status: int | None = None
    ttft_s: float | None = None
    duration_s: float | None = None
    completion_tokens: int | None = None
    queue_wait_s: float = 0.0
    request_id: str | None = None
    generation_s: float | None = None  # time spent generating (backend timings, or first to last byte)
    prompt_tokens: int | None = None  # the whole prompt
    cached_tokens: int | None = None  # of it, served from the backend's prompt cache


class AccessStats:
    def __init__(self, window_s: float, clock: Clock, max_records: int = 200_000) -> None:
        self.window_s = window_s
        self._clock = clock
        self._records: deque[AccessRecord] = deque(maxlen=max_records)

    def record(self, ip: str, model: str, user: str | None, server: str, instance: str, reason: str,
               **outcome: Any) -> None:
        """One routed request; ``outcome`` may add status, ttft_s (streamed answers only),
        duration_s, completion_tokens, queue_wait_s, request_id, generation_s, prompt_tokens and
        cached_tokens (see AccessRecord)."""
        self.add(AccessRecord(self._clock.wall(), ip, model, user, server, instance, reason, **outcome))

    def add(self, record: AccessRecord) -> None:
        """A record made whole by the caller (the recorder: no keyword bag per request)."""
        self._records.append(record)

    def wall(self) -> float:
        """The wall-clock time a record made now carries."""
        return self._clock.wall()

    def summary(self) -> dict[str, Any]:
        now = self._clock.wall()
        self._trim(now)
        records = list(self._records)
        by_minute: dict[int, list[AccessRecord]] = {}
        for record in records:
            by_minute.setdefault(int(record.wall // 60), []).append(record)
        first_minute = int((now - self.window_s) // 60) + 1
        last_minute = int(now // 60)
        users = [r.user for r in records if r.user]
        return {
            # The old tool's keys, with its names and shapes (SPEC Part A).
            "total_requests": len(records),
            "unique_ips": len({r.ip for r in records}),
            "unique_models": len({r.model for r in records}),
            "unique_usernames": len(set(users)),
            "ip_counts": dict(Counter(r.ip for r in records).most_common()),
            "model_counts": dict(Counter(r.model for r in records).most_common()),
            "username_counts": dict(Counter(users).most_common()),
            "time_series": {iso_minute(m): len(by_minute[m]) for m in sorted(by_minute)},
            "retention_hours": self.window_s / 3600.0,
            "oldest_log": iso_utc(records[0].wall) if records else None,
            "newest_log": iso_utc(records[-1].wall) if records else None,
            # Ours.
            "window_seconds": self.window_s,
            "by_server": dict(Counter(r.server for r in records).most_common()),
            "by_reason": dict(Counter(r.reason for r in records).most_common()),
            "per_minute": [_minute(m, by_minute.get(m, [])) for m in range(first_minute, last_minute + 1)],
            "prompt_cache": self._prompt_cache(records, now),
            "recent": [
                {"at": iso_utc(r.wall), "ip": r.ip, "user": r.user, "model": r.model,
                 "server": r.server, "instance": r.instance, "reason": r.reason, "status": r.status,
                 "ttft_ms": _ms(r.ttft_s), "duration_ms": _ms(r.duration_s),
                 "completion_tokens": r.completion_tokens, "queue_wait_ms": _ms(r.queue_wait_s),
                 "request_id": r.request_id, "prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens}
                for r in records[-20:][::-1]
            ],
            "now": iso_utc(now),
        }

    def decisions(self, last: int = 10) -> dict[str, Any]:
        """Routing decisions of the window by reason, and the latest few with their reason."""
        self._trim(self._clock.wall())
        records = list(self._records)
        return {
            "by_reason": dict(Counter(r.reason for r in records).most_common()),
            "recent": [{"at": iso_utc(r.wall), "model": r.model, "server": r.server, "instance": r.instance,
                        "reason": r.reason, "client": r.user or r.ip} for r in records[-last:][::-1]],
        }

    def _prompt_cache(self, records: list[AccessRecord], now: float) -> dict[str, Any]:
        """The prompt-cache hit ratio (cached / prompt tokens) over the last 5 minutes and the
        last hour (at most the window), in total, per server and per model (as asked); only
        requests whose backend reported its cached tokens count."""
        windows = {"last_5m": min(300.0, self.window_s), "last_1h": min(3600.0, self.window_s)}
        out: dict[str, Any] = {"window_s": windows}
        for name, seconds in windows.items():
            total, by_server, by_model = _CacheSum(), {}, {}
            for r in records:
                if r.wall <= now - seconds or r.cached_tokens is None or not r.prompt_tokens:
                    continue
                for sums in (total, by_server.setdefault(r.server, _CacheSum()),
                             by_model.setdefault(r.model, _CacheSum())):
                    sums.add(r.prompt_tokens, r.cached_tokens)
            out[name] = {"total": total.as_dict(),
                         "by_server": {k: v.as_dict() for k, v in sorted(by_server.items())},
                         "by_model": {k: v.as_dict() for k, v in sorted(by_model.items())}}
        return out

    def _trim(self, now: float) -> None:
        while self._records and self._records[0].wall <= now - self.window_s:
            self._records.popleft()


class _CacheSum:
    __slots__ = ("requests", "prompt", "cached")

    def __init__(self) -> None:
        self.requests = self.prompt = self.cached = 0

    def add(self, prompt: int, cached: int) -> None:
        self.requests += 1
        self.prompt += prompt
        self.cached += min(cached, prompt)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "prompt_tokens": self.prompt, "cached_tokens": self.cached,
                "hit_ratio": round(self.cached / self.prompt, 4) if self.prompt else None}


def _minute(minute: int, records: list[AccessRecord]) -> dict[str, Any]:
    """A per-minute bucket: count, TTFT percentiles (streamed answers) and generation speed."""
    ttfts = sorted(r.ttft_s for r in records if r.ttft_s is not None)
    tokens = sum(r.completion_tokens or 0 for r in records)
    gen_s = sum(r.generation_s or 0.0 for r in records if r.completion_tokens)
    return {
        "minute": iso_utc(minute * 60.0),
        "count": len(records),
        "ttft_ms_p50": _ms(_percentile(ttfts, 0.5)),
        "ttft_ms_p99": _ms(_percentile(ttfts, 0.99)),
        "tokens": tokens,
        "tokens_per_s": round(tokens / gen_s, 1) if gen_s > 0 else None,
    }


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
