"""How long a backend's slots stay busy with our requests, and how fast it computes a prompt,
learnt as our requests end.

The cache-aware hold (core/placement.py) waits for a busy slot that holds a request's prompt
only when that slot should free soon: a running average of how long one of our pinned
requests keeps its slot, minus how long the current one has run, says when. Whether the
wait pays is the prefill it saves: llama-server reports, for every answer, the uncached
tokens it evaluated and how long that took (``timings.prompt_n`` / ``prompt_ms``), which over
the prompt's length in characters gives the server's seconds per uncached prompt character.

One average turnover fits a slot badly where requests differ mostly in how much of their
prompt is cached (a cold turn's prefill takes seconds on a slow server, a cached one
milliseconds): a slot busy with a cold prompt "overruns" the average, and an overrun says
little of when it frees (``_best_busy_slot`` in ``state/targets.py`` then expects it as late
again). So a request's expected time on its slot is also learnt in two parts: its prefill
(the pace times the uncached characters it was placed with) and the rest (generation and
fixed costs), whose running average is what each release teaches.
"""
from __future__ import annotations

from dataclasses import dataclass

WEIGHT = 0.2  # of each new observation: recent behaviour counts, one outlier does not dominate
MIN_PREFILL_CHARS = 512  # below this a prefill's time is mostly fixed costs, not its pace


@dataclass
class Pace:
    occupancy_s: float | None = None  # a pinned request's time on its slot
    prefill_s_per_char: float | None = None  # seconds of prefill per uncached prompt character
    rest_s: float | None = None  # a pinned request's time on its slot besides its prefill

    def observe_occupancy(self, seconds: float, uncached_chars: int | None = None) -> None:
        """One pinned request's time on its slot, placed with ``uncached_chars`` of its
        prompt not cached there (None: not known)."""
        if seconds <= 0:
            return
        self.occupancy_s = _averaged(self.occupancy_s, seconds)
        prefill = self.prefill_s(uncached_chars)
        if prefill is not None:
            self.rest_s = _averaged(self.rest_s, max(seconds - prefill, 0.0))

    def prefill_s(self, uncached_chars: int | None) -> float | None:
        pace = self.prefill_s_per_char
        return None if pace is None or uncached_chars is None else pace * max(uncached_chars, 0)

    def expected_s(self, uncached_chars: int | None) -> float | None:
        """How long a request placed with ``uncached_chars`` should keep its slot: its prefill
        and the usual rest where both are learnt, else the usual turnover."""
        prefill = self.prefill_s(uncached_chars)
        if prefill is not None and self.rest_s is not None:
            return prefill + self.rest_s
        return self.occupancy_s

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
        self.prefill_s_per_char = _averaged(self.prefill_s_per_char, prefill_ms / 1000.0 / chars)


def _averaged(mean: float | None, value: float) -> float:
    return value if mean is None else mean + WEIGHT * (value - mean)
