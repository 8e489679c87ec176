"""The dashboard's short window: per backend, the last 15 minutes at a few seconds' resolution.

Time is cut into buckets of ``sample_s`` (monotonic seconds, the clock ``Exchange`` uses).
A small task (``io.sampling``) writes the gauges of the moment into the current bucket (in
flight, queued, busy and total slots); every finished exchange puts its time to first token
into the bucket where that first token came (streamed answers only) and spreads its
completion tokens over the buckets of its generation, so tokens/s is the backend's output
rate over time, not a spike when a long answer ends. Buckets older than the span drop out;
TTFT samples per bucket are capped (a fair reservoir), so memory stays bounded under load.
"""
from __future__ import annotations

import math
import random
from typing import Any, Mapping, NamedTuple

SPAN_S = 900.0
TTFT_SAMPLES = 256  # per backend and bucket


class Gauges(NamedTuple):
    inflight: int
    queued: int
    slots_busy: int | None = None
    slots_total: int | None = None


class _Bucket:
    __slots__ = ("gauges", "ttfts", "seen", "tokens")

    def __init__(self) -> None:
        self.gauges: Gauges | None = None
        self.ttfts: list[float] = []
        self.seen = 0  # TTFTs offered, kept or not (reservoir)
        self.tokens = 0.0


class BackendSeries:
    def __init__(self, sample_s: float, span_s: float = SPAN_S, rng: random.Random | None = None) -> None:
        self.sample_s = sample_s
        self._span_s = span_s
        self.points = max(2, math.ceil(span_s / sample_s))
        self._by_server: dict[str, dict[int, _Bucket]] = {}
        self._rng = rng or random.Random(0)

    def resize(self, sample_s: float) -> None:
        """A new resolution (a reload changed it): what was kept at the old one is dropped."""
        if sample_s != self.sample_s:
            self.sample_s = sample_s
            self.points = max(2, math.ceil(self._span_s / sample_s))
            self._by_server.clear()

    def sample(self, now: float, gauges: Mapping[str, Gauges]) -> None:
        """The gauges of every configured backend now; backends not listed are forgotten."""
        index = self._index(now)
        for name in [name for name in self._by_server if name not in gauges]:
            del self._by_server[name]
        oldest = index - self.points + 1
        for name, value in gauges.items():
            buckets = self._by_server.setdefault(name, {})
            for stale in [i for i in buckets if i < oldest]:
                del buckets[stale]
            self._bucket(buckets, index).gauges = value

    def observe(self, server: str, now: float, first_byte: float | None, ttft_s: float | None,
                tokens: int | None, generating_from: float | None) -> None:
        """One finished exchange on ``server`` (ended at ``now``): its TTFT where its first
        byte came (None: not a streamed answer) and ``tokens`` spread over
        [``generating_from``, ``now``]."""
        buckets = self._by_server.get(server)
        if buckets is None:
            return  # not sampled (yet, or any more): not a configured backend
        oldest = self._index(now) - self.points + 1
        if ttft_s is not None and first_byte is not None and self._index(first_byte) >= oldest:
            bucket = self._bucket(buckets, self._index(first_byte))
            bucket.seen += 1
            if len(bucket.ttfts) < TTFT_SAMPLES:
                bucket.ttfts.append(ttft_s)
            else:
                slot = self._rng.randrange(bucket.seen)
                if slot < TTFT_SAMPLES:
                    bucket.ttfts[slot] = ttft_s
        if tokens:
            self._spread(buckets, tokens, now if generating_from is None else min(generating_from, now), now, oldest)

    def _spread(self, buckets: dict[int, _Bucket], tokens: int, start: float, end: float, oldest: int) -> None:
        span = end - start
        first, last = self._index(start), self._index(end)
        if span <= 0 or first == last:
            if last >= oldest:
                self._bucket(buckets, last).tokens += tokens
            return
        rate = tokens / span
        for index in range(max(first, oldest), last + 1):
            lo = max(start, index * self.sample_s)
            hi = min(end, (index + 1) * self.sample_s)
            if hi > lo:
                self._bucket(buckets, index).tokens += rate * (hi - lo)

    def snapshot(self, now: float) -> dict[str, Any]:
        """Aligned arrays per backend, oldest first, the last one the bucket of ``now``; null
        where nothing was sampled or observed. ``end_index`` * ``sample_s`` is that bucket's
        start in monotonic seconds (the caller maps it to wall time)."""
        end = self._index(now)
        indexes = range(end - self.points + 1, end + 1)
        backends = {}
        for name, buckets in self._by_server.items():
            rows = [buckets.get(i) for i in indexes]
            backends[name] = _columns(rows, self.sample_s)
        return {"sample_s": self.sample_s, "points": self.points, "end_index": end, "backends": backends}

    def _index(self, t: float) -> int:
        return int(t // self.sample_s)

    @staticmethod
    def _bucket(buckets: dict[int, _Bucket], index: int) -> _Bucket:
        bucket = buckets.get(index)
        if bucket is None:
            bucket = buckets[index] = _Bucket()
        return bucket


def _columns(rows: list[_Bucket | None], sample_s: float) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {key: [] for key in (
        "inflight", "queued", "slots_busy", "slots_total", "ttft_ms_p50", "ttft_ms_p95", "tokens_per_s")}
    for bucket in rows:
        gauges = bucket.gauges if bucket is not None else None
        out["inflight"].append(gauges.inflight if gauges else None)
        out["queued"].append(gauges.queued if gauges else None)
        out["slots_busy"].append(gauges.slots_busy if gauges else None)
        out["slots_total"].append(gauges.slots_total if gauges else None)
        ttfts = sorted(bucket.ttfts) if bucket is not None and bucket.ttfts else None
        out["ttft_ms_p50"].append(_ms(ttfts, 0.5))
        out["ttft_ms_p95"].append(_ms(ttfts, 0.95))
        if bucket is None or (gauges is None and not bucket.tokens):
            out["tokens_per_s"].append(None)
        else:
            out["tokens_per_s"].append(round(bucket.tokens / sample_s, 2))
    return out


def _ms(ordered: list[float] | None, q: float) -> float | None:
    """The nearest-rank percentile (as access_stats computes it), in milliseconds."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)
