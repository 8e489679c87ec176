"""The slots of one served instance, each with the prompt it last processed.

Like llama-server, a request is given the idle slot whose cached tokens share the longest
prefix with its prompt, provided that prefix is more than SLOT_PROMPT_SIMILARITY of the
prompt (llama-server's --slot-prompt-similarity, default 0.1); otherwise the least
recently used idle slot, so unrelated prompts do not evict each other's caches. A request
may pin a slot with ``id_slot`` (an id as /slots shows it; -1 or another instance's id
means any). When no suitable slot is idle the request waits, first come first served,
and is counted as deferred. After a request the slot caches prompt + generated tokens, as the
real server keeps them in its KV cache.

With a host prompt cache (``cache_ram_prompts`` > 0, llama-server's ``--cache-ram``), a
slot's prompt that a new task overwrites is kept in host memory (least recently used out),
and a task whose prompt shares a longer prefix with a kept prompt than with its slot's own
gets that prompt restored into the slot first.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from .tokens import common_prefix_len

SLOT_PROMPT_SIMILARITY = 0.1


@dataclass
class Slot:
    """One slot: its cache and, while busy, the progress of the current task."""

    id: int
    instance: str
    n_ctx: int
    busy: bool = False
    cached: list[str] = field(default_factory=list)
    last_used: float = 0.0
    id_task: int = -1
    n_prompt: int = 0
    prompt_n: int = 0
    cache_n: int = 0
    n_predict: int = 0
    n_decoded: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # the last task's, as /slots shows them
    used: bool = False

    def reuse_len(self, tokens: list[str]) -> int:
        """Cached tokens this prompt may reuse: the common prefix, never the whole prompt."""
        lcp = common_prefix_len(self.cached, tokens)
        return min(lcp, max(len(tokens) - 1, 0))

    def to_json(self) -> dict[str, Any]:
        """The slot as GET /slots shows it (plus a non-standard "model")."""
        out: dict[str, Any] = {
            "id": self.id,
            "n_ctx": self.n_ctx,
            "speculative": False,
            "is_processing": self.busy,
            "model": self.instance,
        }
        if not self.used:
            return out
        remain = max(self.n_predict - self.n_decoded, 0)
        out.update(
            id_task=self.id_task,
            n_prompt_tokens=self.n_prompt,
            n_prompt_tokens_processed=self.prompt_n,
            n_prompt_tokens_cache=self.cache_n,
            params=self.params,
            next_token=[{
                "has_next_token": self.busy and remain > 0,
                "has_new_line": False,
                "n_remain": remain,
                "n_decoded": self.n_decoded,
            }],
        )
        return out


@dataclass(eq=False)
class _Waiter:
    tokens: list[str]
    id_slot: int
    future: asyncio.Future[Slot]


class SlotPool:
    """The slots of one instance and the requests waiting for them."""

    def __init__(self, instance: str, first_id: int, count: int, n_ctx: int, host_prompts: int = 0) -> None:
        self.instance = instance
        self.slots = [Slot(id=first_id + i, instance=instance, n_ctx=n_ctx) for i in range(count)]
        self._waiters: deque[_Waiter] = deque()
        self.host_prompts = host_prompts
        self.host: list[list[str]] = []  # kept prompts, least recently used first

    def reuse(self, slot: Slot, tokens: list[str]) -> int:
        """Cached tokens a task starting on ``slot`` reuses; with a host cache, first swap in
        the kept prompt sharing the longest prefix if it beats the slot's own."""
        own = slot.reuse_len(tokens)
        if self.host_prompts <= 0:
            return own
        best = max(self.host, key=lambda kept: common_prefix_len(kept, tokens), default=None)
        if best is not None and min(common_prefix_len(best, tokens), len(tokens) - 1) > own:
            self.host.remove(best)
            self._keep(slot.cached)
            slot.cached = best
            return slot.reuse_len(tokens)
        if common_prefix_len(slot.cached, tokens) < len(slot.cached):
            self._keep(slot.cached)  # this task overwrites the rest of it
        return own

    def _keep(self, tokens: list[str]) -> None:
        if tokens:
            self.host.append(list(tokens))
            del self.host[:-self.host_prompts]

    @property
    def busy_count(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    @property
    def deferred_count(self) -> int:
        return sum(1 for w in self._waiters if not w.future.done())

    def owns(self, slot_id: int) -> bool:
        return any(s.id == slot_id for s in self.slots)

    def _pick(self, tokens: list[str], id_slot: int) -> Slot | None:
        """The idle slot this prompt should take, or None if it must wait."""
        if id_slot >= 0 and self.owns(id_slot):
            slot = next(s for s in self.slots if s.id == id_slot)
            return None if slot.busy else slot
        idle = [s for s in self.slots if not s.busy]
        if not idle:
            return None
        best, best_lcp = None, 0
        for slot in idle:
            lcp = common_prefix_len(slot.cached, tokens)
            if lcp > best_lcp:
                best, best_lcp = slot, lcp
        if best is not None and best_lcp > SLOT_PROMPT_SIMILARITY * len(tokens):
            return best
        return min(idle, key=lambda s: (s.last_used, s.id))

    def _take(self, slot: Slot) -> Slot:
        slot.busy = True
        slot.used = True
        slot.last_used = time.monotonic()
        return slot

    async def acquire(self, tokens: list[str], id_slot: int = -1) -> Slot:
        """Wait for and take a slot; a cancelled waiter gives back what it got."""
        waiter = _Waiter(tokens, id_slot, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._dispatch()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self, slot: Slot) -> None:
        """Free a slot and hand idle slots to waiters in arrival order."""
        slot.busy = False
        slot.last_used = time.monotonic()
        self._dispatch()

    def _dispatch(self) -> None:
        for waiter in list(self._waiters):
            if not any(not s.busy for s in self.slots):
                return
            if waiter.future.done():
                continue
            slot = self._pick(waiter.tokens, waiter.id_slot)
            if slot is not None:
                waiter.future.set_result(self._take(slot))
                self._waiters.remove(waiter)

    @asynccontextmanager
    async def occupy(self, tokens: list[str], id_slot: int = -1) -> AsyncIterator[Slot]:
        """Hold a slot for the body of the block; every exit path frees it."""
        slot = await self.acquire(tokens, id_slot)
        try:
            yield slot
        finally:
            self.release(slot)
