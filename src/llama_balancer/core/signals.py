"""Backend signals as pure data: what llama-server and vLLM say about their own load.

Every parser takes the raw answer and returns a frozen value, or None when the answer
carries no usable signal (an error body, ``--metrics`` off, garbage). None of them raises:
a backend that answers nonsense must never take the poller down with it.

Polled numbers lag (they are a second old at best), so the balancer fuses them with its own
in-flight counts (``fuse_load``) instead of trusting either alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Literal

import orjson

from .frozen import quick_init
from .prometheus import Sample, parse_prometheus, prometheus_samples

BackendKind = Literal["agent", "llama.cpp", "vllm", "openai", "auto"]

# --- llama.cpp llama-server ---------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One entry of ``GET /slots``; ``model`` is the simulator's non-standard addition."""

    id: int
    processing: bool
    n_ctx: int | None = None
    model: str | None = None
    n_prompt_tokens: int | None = None
    n_prompt_tokens_cache: int | None = None
    id_task: int | None = None  # the last task it ran (absent on a slot never used)


@dataclass(frozen=True)
class SlotsInfo:
    slots: tuple[Slot, ...]

    @property
    def total(self) -> int:
        return len(self.slots)

    @cached_property
    def busy_ids(self) -> tuple[int, ...]:
        """Computed once per poll's answer (the value is frozen), read by every decision."""
        return tuple(s.id for s in self.slots if s.processing)

    @cached_property
    def idle_ids(self) -> tuple[int, ...]:
        """Computed once per poll's answer, like ``busy_ids``."""
        return tuple(s.id for s in self.slots if not s.processing)

    @property
    def busy(self) -> int:
        return len(self.busy_ids)

    @property
    def idle(self) -> int:
        return len(self.idle_ids)

    def for_model(self, model: str) -> SlotsInfo:
        """The slots of one instance where slots name their model; all of them otherwise,
        and when none names this one (the server answers a name it does not list, as a plain
        llama-server answers any: it must not look as if it had no slot at all)."""
        if not self.named:
            return self
        memo = self.per_model
        found = memo.get(model)
        if found is None:
            mine = tuple(s for s in self.slots if s.model == model)
            found = SlotsInfo(mine) if mine else self
            if len(memo) < 64:  # instance names; bounded all the same
                memo[model] = found
        return found

    @cached_property
    def named(self) -> bool:
        """Whether slots name their model (the simulator's addition)."""
        return any(s.model is not None for s in self.slots)

    @cached_property
    def per_model(self) -> dict[str, SlotsInfo]:
        """``for_model``'s answers so far (the slots are frozen, so they hold)."""
        return {}


def emptied_idle_slot(before: SlotsInfo | None, now: SlotsInfo) -> bool:
    """Whether a slot that ran a task (or held a prompt at the last poll) is idle and empty
    now: the server clears idle slots (llama-server with a unified KV cache, its default
    without ``--parallel``, saves an idle slot to its host cache and empties it as soon as
    another slot starts; /slots keeps its ``id_task`` with ``n_prompt_tokens`` 0)."""
    held = {s.id for s in before.slots if s.n_prompt_tokens} if before is not None else set()
    return any(not s.processing and s.n_prompt_tokens == 0 and (s.id_task is not None or s.id in held)
               for s in now.slots)


def parse_llamacpp_slots(body: bytes) -> SlotsInfo | None:
    """``GET /slots``: a list of slot objects. An error body or an empty list gives None.

    A slot's state is ``is_processing`` (current servers) or ``state`` != 0 (older ones);
    a slot that says neither counts as busy, so nothing is ever pinned to it.
    """
    data = _json(body)
    if isinstance(data, dict):
        data = data.get("slots")
    if not isinstance(data, list):
        return None
    slots = [_slot(index, item) for index, item in enumerate(data) if isinstance(item, dict)]
    return SlotsInfo(tuple(slots)) if slots else None


def _slot(index: int, item: dict[str, Any]) -> Slot:
    slot_id = _int(item.get("id"))
    flag = item.get("is_processing")
    if isinstance(flag, bool):
        processing = flag
    else:
        state = _int(item.get("state"))
        processing = state is None or state != 0
    model = item.get("model")
    return Slot(
        id=slot_id if slot_id is not None else index,
        processing=processing,
        n_ctx=_int(item.get("n_ctx")),
        model=model if isinstance(model, str) else None,
        n_prompt_tokens=_int(item.get("n_prompt_tokens")),
        n_prompt_tokens_cache=_int(item.get("n_prompt_tokens_cache")),
        id_task=_int(item.get("id_task")),
    )


@dataclass(frozen=True)
class LlamaMetrics:
    """The live gauges and token counters of llama-server's ``--metrics`` output."""

    requests_processing: int
    requests_deferred: int
    prompt_tokens_total: float | None = None
    prompt_tokens_cached_total: float | None = None
    tokens_predicted_total: float | None = None
    n_busy_slots_per_decode: float | None = None

    @property
    def cache_hit_ratio(self) -> float | None:
        """Share of prompt tokens served from the cache over the server's life."""
        fresh, cached = self.prompt_tokens_total, self.prompt_tokens_cached_total
        if fresh is None or cached is None or fresh + cached <= 0:
            return None
        return cached / (fresh + cached)


def parse_llamacpp_metrics(body: bytes) -> LlamaMetrics | None:
    """``GET /metrics`` of llama-server; None without ``llamacpp:requests_processing``."""
    values = parse_prometheus(body)
    processing = _count(values.get("llamacpp:requests_processing"))
    if processing is None:
        return None
    return LlamaMetrics(
        requests_processing=processing,
        requests_deferred=_count(values.get("llamacpp:requests_deferred")) or 0,
        prompt_tokens_total=values.get("llamacpp:prompt_tokens_total"),
        prompt_tokens_cached_total=values.get("llamacpp:prompt_tokens_cached_total"),
        tokens_predicted_total=values.get("llamacpp:tokens_predicted_total"),
        n_busy_slots_per_decode=values.get("llamacpp:n_busy_slots_per_decode"),
    )


def parse_llamacpp_props(body: bytes) -> int | None:
    """``GET /props``: ``total_slots`` (the server's ``--parallel``), when positive."""
    data = _json(body)
    total = _int(data.get("total_slots")) if isinstance(data, dict) else None
    return total if total is not None and total > 0 else None


def parse_llamacpp_health(status: int, body: bytes) -> bool:
    """``GET /health``: 200 is up (even with every slot busy); 503 is loading, anything
    else down. A 200 whose JSON ``status`` speaks of loading or an error is not up either.
    """
    if status != 200:
        return False
    data = _json(body)
    said = data.get("status") if isinstance(data, dict) else None
    return not (isinstance(said, str) and ("loading" in said.lower() or "error" in said.lower()))


# --- vLLM ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VllmMetrics:
    running: int
    waiting: int
    kv_usage: float | None = None  # 0..1, highest over engines


def parse_vllm_metrics(body: bytes) -> VllmMetrics | None:
    """``GET /metrics`` of vLLM; None when it has neither running nor waiting gauges.

    Counts are summed over labels (``model_name``, ``engine``); swapped requests (vLLM v0)
    count as waiting. KV usage is the highest over labels, since a sum of fractions is no
    fraction; ``vllm:kv_cache_usage_perc`` is preferred to the older ``gpu_cache_usage_perc``.
    """
    samples = prometheus_samples(body)
    values = parse_prometheus(body)
    running = _count(values.get("vllm:num_requests_running"))
    waiting = _count(values.get("vllm:num_requests_waiting"))
    if running is None and waiting is None:
        return None
    swapped = _count(values.get("vllm:num_requests_swapped")) or 0
    kv = _highest(samples, "vllm:kv_cache_usage_perc")
    if kv is None:
        kv = _highest(samples, "vllm:gpu_cache_usage_perc")
    return VllmMetrics(running or 0, (waiting or 0) + swapped, kv)


def _highest(samples: Iterable[Sample], name: str) -> float | None:
    values = [s.value for s in samples if s.name == name and math.isfinite(s.value)]
    if not values:
        return None
    top = max(values)
    top = top / 100.0 if top > 1.0 else top  # someone's percent instead of a fraction
    return min(max(top, 0.0), 1.0)


# --- kinds and the fused load -------------------------------------------------------------


def guess_kind(
    server_header: str | None, props_body: bytes | None, metrics_body: bytes | None
) -> Literal["llama.cpp", "vllm", "openai"]:
    """What an ``auto`` backend is: llama-server says so in ``Server`` and ``/props``;
    vLLM in its metric names; anything else is a plain OpenAI-compatible server.
    """
    if server_header and "llama.cpp" in server_header.lower():
        return "llama.cpp"
    if props_body is not None and parse_llamacpp_props(props_body) is not None:
        return "llama.cpp"
    metrics = metrics_body or b""
    if b"llamacpp:" in metrics:
        return "llama.cpp"
    if b"vllm:" in metrics:
        return "vllm"
    return "openai"


@quick_init
@dataclass(frozen=True)
class BackendLoad:
    """One poll's view of a backend's load, whatever kind of server said it."""

    running: int
    waiting: int
    slots_total: int | None = None
    slots_idle: int | None = None
    kv_usage: float | None = None


def llamacpp_load(
    metrics: LlamaMetrics | None, slots: SlotsInfo | None, total_slots: int | None = None
) -> BackendLoad | None:
    """Fuse llama-server's ``/metrics``, ``/slots`` and ``/props`` into one load view.

    Metrics give running and deferred; without them the busy slots are the running count.
    """
    if metrics is not None:
        running, waiting = metrics.requests_processing, metrics.requests_deferred
    elif slots is not None:
        running, waiting = slots.busy, 0
    else:
        return None
    return BackendLoad(
        running=running,
        waiting=waiting,
        slots_total=slots.total if slots else total_slots,
        slots_idle=slots.idle if slots else None,
    )


def vllm_load(metrics: VllmMetrics | None) -> BackendLoad | None:
    if metrics is None:
        return None
    return BackendLoad(metrics.running, metrics.waiting, kv_usage=metrics.kv_usage)


def fuse_load(
    own_inflight: int, polled: BackendLoad | None, polled_age_s: float, max_age_s: float,
    own_at_poll: int | None = None,
) -> int:
    """The load to balance on, while the poll is at most ``max_age_s`` old: with
    ``own_at_poll`` (our in-flight count when the poll was answered), own in-flight now plus
    what the poll saw beyond that; without it, ``max(own in-flight, polled running +
    waiting)``. A stale poll gives own in-flight alone.

    Own counts see our requests the instant they start and end but not other clients
    (another replica, someone calling the server directly); the poll sees everyone but a
    second late. ``max`` counts our requests that ended since the poll as still running
    until the next one, so a server looks full for up to a poll interval after its slots
    freed; subtracting our share of the poll keeps the others' load and drops that lag.
    A stale poll is ignored so that a dead poller cannot pin a backend as loaded forever.
    ``polled`` must cover the same scope as ``own_inflight`` (the same server x instance).
    """
    own = max(own_inflight, 0)
    if polled is None or not polled_age_s <= max_age_s:  # NaN age counts as stale
        return own
    seen = max(polled.running, 0) + max(polled.waiting, 0)
    if own_at_poll is None:
        return max(own, seen)
    return own + max(seen - max(own_at_poll, 0), 0)


def free_capacity(
    request_max: int | None, server_load: int, slots_total: int | None, slots_load: int
) -> int | None:
    """Room left before a target is full: the tighter of ``request-max`` (counted over the
    whole server) and the slots (counted over the slots' instance); None when neither limit
    is known. Never negative: 0 means full.
    """
    room = []
    if request_max is not None:
        room.append(request_max - server_load)
    if slots_total is not None:
        room.append(slots_total - slots_load)
    return max(min(room), 0) if room else None


# --- small readers ------------------------------------------------------------------------


def _json(body: bytes | str) -> Any:
    try:
        return orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if math.isfinite(value) else None


def _count(value: float | None) -> int | None:
    """A gauge as a request count: rounded, never negative; None when absent or infinite."""
    if value is None or not math.isfinite(value):
        return None
    return max(int(round(value)), 0)
