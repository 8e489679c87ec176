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


# In llama-server's order, with its help texts.
_METRICS: tuple[tuple[str, str, str], ...] = (
    ("prompt_tokens_total", "counter", "Number of prompt tokens processed, excluding cached tokens"),
    ("prompt_tokens_cached_total", "counter", "Number of prompt tokens reused from the cache"),
    ("prompt_seconds_total", "counter", "Total time spent processing prompts"),
    ("tokens_predicted_total", "counter", "Number of generation tokens processed"),
    ("tokens_predicted_seconds_total", "counter", "Total time spent generating tokens"),
    ("n_decode_total", "counter",
     "Total number of llama_decode() calls, excluding speculative decoding and multimodal decoding"),
    ("n_tokens_max", "counter", "Largest observed sequence length (prompt + generation)"),
    ("spec_decode_num_draft_tokens_total", "counter", "Speculative: Total draft tokens generated"),
    ("spec_decode_num_accepted_tokens_total", "counter",
     "Speculative: Total draft tokens accepted by the target model"),
    ("spec_decode_num_drafts_total", "counter", "Speculative: Total speculative decoding verification steps"),
    ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s"),
    ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s"),
    ("requests_processing", "gauge", "Number of requests processing"),
    ("requests_deferred", "gauge", "Number of requests deferred"),
    ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() call"),
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
        "spec_decode_num_draft_tokens_total": 0,  # the sim never drafts
        "spec_decode_num_accepted_tokens_total": 0,
        "spec_decode_num_drafts_total": 0,
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
        lines.append(f"{full} {values[name]:g}")  # C++ stream formatting: 0, 0.043723, 1.2e+06
    return "\n".join(lines) + "\n"
