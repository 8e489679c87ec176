"""How long a backend's slots stay busy with our requests, and how fast it computes a prompt,
learnt as our requests end.

The cache-aware hold (core/placement.py) waits for a busy slot that holds a request's prompt
only when that slot should free soon: a running average of how long one of our pinned
requests keeps its slot, minus how long the current one has run, says when. Whether the
wait pays is the prefill it saves: llama-server reports, for every answer, the uncached
tokens it evaluated and how long that took (``timings.prompt_n`` / ``prompt_ms``), which over
the prompt's length in characters gives the server's seconds per uncached prompt character.
"""
from __future__ import annotations

from dataclasses import dataclass

WEIGHT = 0.2  # of each new observation: recent behaviour counts, one outlier does not dominate
MIN_PREFILL_CHARS = 512  # below this a prefill's time is mostly fixed costs, not its pace


@dataclass
class Pace:
    occupancy_s: float | None = None  # a pinned request's time on its slot
    prefill_s_per_char: float | None = None  # seconds of prefill per uncached prompt character

    def observe_occupancy(self, seconds: float) -> None:
        if seconds > 0:
            self.occupancy_s = seconds if self.occupancy_s is None else \
                self.occupancy_s + WEIGHT * (seconds - self.occupancy_s)

    def observe_prefill(self, prompt_chars: int, prompt_tokens: int, prefill_tokens: int,
                        prefill_ms: float) -> None:
        """One answer's prefill: ``prefill_tokens`` of its ``prompt_tokens`` evaluated in
        ``prefill_ms``; the prompt's ``prompt_chars`` turn tokens into the characters the
        placement counts in."""
        if prompt_tokens <= 0 or prefill_tokens <= 0 or prefill_ms <= 0 or prefill_tokens > prompt_tokens:
            return
        chars = prompt_chars * prefill_tokens / prompt_tokens
        if chars < MIN_PREFILL_CHARS:
            return
        rate = prefill_ms / 1000.0 / chars
        self.prefill_s_per_char = rate if self.prefill_s_per_char is None else \
            self.prefill_s_per_char + WEIGHT * (rate - self.prefill_s_per_char)
