"""Counters of the simulated server and their Prometheus text (GET /metrics).

Names and meanings follow llama-server's `--metrics` output: counters are updated when a
request finishes, `prompt_tokens_total` counts uncached prompt tokens only, and the live
gauges are read from the slot pools at scrape time. `n_busy_slots_per_decode` is shown as
the number of busy slots right now (the real one is an average over decodes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .slots import SlotPool


@dataclass
class Stats:
    """Totals over the server's life, all instances together."""

    prompt_tokens_total: int = 0
    prompt_tokens_cached_total: int = 0
    prompt_seconds_total: float = 0.0
    tokens_predicted_total: int = 0
    tokens_predicted_seconds_total: float = 0.0
    n_decode_total: int = 0
    n_tokens_max: int = 0

    def record(self, prompt_n: int, cache_n: int, prompt_s: float,
               predicted_n: int, predicted_s: float) -> None:
        """Add one finished (or cut short) request."""
        self.prompt_tokens_total += prompt_n
        self.prompt_tokens_cached_total += cache_n
        self.prompt_seconds_total += prompt_s
        self.tokens_predicted_total += predicted_n
        self.tokens_predicted_seconds_total += predicted_s
        self.n_decode_total += (1 if prompt_n else 0) + predicted_n
        self.n_tokens_max = max(self.n_tokens_max, prompt_n + cache_n + predicted_n)


_METRICS: tuple[tuple[str, str, str], ...] = (
    ("prompt_tokens_total", "counter", "Number of prompt tokens processed."),
    ("prompt_tokens_cached_total", "counter", "Number of prompt tokens served from the cache."),
    ("prompt_seconds_total", "counter", "Prompt process time"),
    ("tokens_predicted_total", "counter", "Number of generation tokens processed."),
    ("tokens_predicted_seconds_total", "counter", "Predict process time"),
    ("n_decode_total", "counter", "Total number of llama_decode() calls"),
    ("n_tokens_max", "counter", "Largest observed n_tokens."),
    ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() call"),
    ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s."),
    ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s."),
    ("requests_processing", "gauge", "Number of requests processing."),
    ("requests_deferred", "gauge", "Number of requests deferred."),
)


def _per_second(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def metric_values(stats: Stats, pools: Iterable[SlotPool]) -> dict[str, float]:
    """Current value of every metric, keyed by its name without the prefix."""
    pools = list(pools)
    busy = sum(p.busy_count for p in pools)
    return {
        "prompt_tokens_total": stats.prompt_tokens_total,
        "prompt_tokens_cached_total": stats.prompt_tokens_cached_total,
        "prompt_seconds_total": stats.prompt_seconds_total,
        "tokens_predicted_total": stats.tokens_predicted_total,
        "tokens_predicted_seconds_total": stats.tokens_predicted_seconds_total,
        "n_decode_total": stats.n_decode_total,
        "n_tokens_max": stats.n_tokens_max,
        "n_busy_slots_per_decode": busy,
        "prompt_tokens_seconds": _per_second(stats.prompt_tokens_total, stats.prompt_seconds_total),
        "predicted_tokens_seconds": _per_second(
            stats.tokens_predicted_total, stats.tokens_predicted_seconds_total),
        "requests_processing": busy,
        "requests_deferred": sum(p.deferred_count for p in pools),
    }


def render_metrics(stats: Stats, pools: Iterable[SlotPool]) -> str:
    """Prometheus exposition text with `llamacpp:` names and HELP/TYPE lines."""
    values = metric_values(stats, pools)
    lines: list[str] = []
    for name, kind, help_text in _METRICS:
        full = f"llamacpp:{name}"
        lines.append(f"# HELP {full} {help_text}")
        lines.append(f"# TYPE {full} {kind}")
        lines.append(f"{full} {values[name]}")
    return "\n".join(lines) + "\n"
