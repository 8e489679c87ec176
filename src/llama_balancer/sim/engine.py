"""The work of one completion on one slot: prompt evaluation, then token by token decode.

Time is simulated with sleeps (none in fast mode, where the loop is still yielded to) and
measured for the timings, so they report what a client actually waited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from .config import SimConfig
from .parse import Job
from .slots import Slot, SlotPool
from .state import SimState
from .tokens import generated_piece


@dataclass
class Run:
    """The progress and results of one completion."""

    job: Job
    task_id: int
    created: int
    n_ctx: int
    slot_id: int = -1
    cache_n: int = 0
    prompt_n: int = 0
    prompt_s: float = 0.0
    prompt_done: bool = False
    pieces: list[str] = field(default_factory=list)
    predicted_s: float = 0.0

    @property
    def n_predict(self) -> int:
        """Tokens to generate: the request's limit, cut where the slot's context ends. A tool
        call ends with its arguments (before the limit, when the request sets one)."""
        job = self.job
        wanted = job.max_tokens
        if job.tool is not None:
            wanted = min(job.max_tokens, len(self.script)) if job.explicit_limit else len(self.script)
        return max(0, min(wanted, self.n_ctx - len(self.job.tokens)))

    @property
    def script(self) -> list[str]:
        """A tool call's tokens: what the model generates instead of ``w0 w1 ...``."""
        return [] if self.job.tool is None else self.job.tool.pieces

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def finish_reason(self) -> str:
        """"length" when a limit cut the text, "stop" when the request set none; a tool call
        ends with "tool_calls" once its arguments are complete."""
        if self.job.tool is not None:
            return "tool_calls" if len(self.pieces) >= len(self.script) else "length"
        capped = self.n_predict < self.job.max_tokens
        return "length" if self.job.explicit_limit or capped else "stop"

    def timings(self) -> dict[str, Any]:
        prompt_ms = self.prompt_s * 1000.0
        predicted_ms = self.predicted_s * 1000.0
        predicted_n = len(self.pieces)
        return {
            "cache_n": self.cache_n,
            "prompt_n": self.prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / self.prompt_n if self.prompt_n else 0.0,
            "prompt_per_second": self.prompt_n / self.prompt_s if self.prompt_s > 0 else 0.0,
            "predicted_n": predicted_n,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
            "predicted_per_second": predicted_n / self.predicted_s if self.predicted_s > 0 else 0.0,
        }

    def usage(self) -> dict[str, Any]:
        prompt = len(self.job.tokens)
        completion = len(self.pieces)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": self.cache_n},
        }


async def pause(seconds: float) -> None:
    """Sleep, or in fast mode (0 s) just let other tasks run."""
    await asyncio.sleep(seconds if seconds > 0 else 0)


@asynccontextmanager
async def working(state: SimState, run: Run) -> AsyncIterator[Slot]:
    """Hold a slot of the job's instance; on every exit, update its cache and the counters."""
    job = run.job
    async with state.pools[job.instance].occupy(job.tokens, job.id_slot) as slot:
        run.slot_id = slot.id
        _start_task(state.pools[job.instance], slot, run)
        try:
            yield slot
        finally:
            _finish_task(state, run, slot)


def _start_task(pool: SlotPool, slot: Slot, run: Run) -> None:
    job = run.job
    run.cache_n = pool.reuse(slot, job.tokens) if job.cache_prompt else 0
    run.prompt_n = len(job.tokens) - run.cache_n
    slot.id_task = run.task_id
    slot.n_prompt = len(job.tokens)
    slot.prompt_n = run.prompt_n
    slot.cache_n = run.cache_n
    slot.n_predict = run.n_predict
    slot.n_decoded = 0
    slot.params = job.slot_params()


def _finish_task(state: SimState, run: Run, slot: Slot) -> None:
    """The slot keeps what it evaluated: prompt + generated tokens (the prefix if cut short)."""
    tokens = run.job.tokens if run.prompt_done else run.job.tokens[: run.cache_n]
    slot.cached = list(tokens) + run.pieces
    state.stats.record(
        prompt_n=run.prompt_n if run.prompt_done else 0,
        cache_n=run.cache_n,
        prompt_s=run.prompt_s,
        predicted_n=len(run.pieces),
        predicted_s=run.predicted_s,
    )


async def evaluate_prompt(cfg: SimConfig, run: Run) -> None:
    """Spend the time the uncached part of the prompt takes."""
    t0 = time.monotonic()
    await pause(cfg.prompt_delay(run.prompt_n))
    run.prompt_s = time.monotonic() - t0
    run.prompt_done = True


async def next_token(cfg: SimConfig, run: Run, slot: Slot) -> str:
    """Decode one more token after the configured delay, and return it."""
    t0 = time.monotonic()
    await pause(cfg.token_delay())
    index = len(run.pieces)
    piece = generated_piece(run.job.first_piece + index) if run.job.tool is None else run.job.tool.pieces[index]
    run.pieces.append(piece)
    run.predicted_s += time.monotonic() - t0
    slot.n_decoded = len(run.pieces)
    return piece
