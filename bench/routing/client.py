"""The clients: one asyncio task per conversation seat, talking to the balancer.

A seat runs conversations one after another until the deadline: append the user message,
stream the answer (TTFT = time to the first event carrying content), read ``timings`` and
``usage`` from the last events, append the reply, think, repeat. No turn starts after the
deadline; turns already running finish (each bounded by the request timeout).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from .streamed import TurnError, stream_turn
from .workload import MODEL, Conversation, Scripts, message_tokens


@dataclass
class TurnRecord:
    seat: int
    conversation: str
    variant: int
    turn: int  # 0-based
    server: str | None
    start_s: float  # since the run began
    end_s: float
    ttft_s: float
    prompt_tokens: int  # usage.prompt_tokens
    cache_n: int  # timings.cache_n (== usage.prompt_tokens_details.cached_tokens)
    prompt_n: int  # timings.prompt_n: tokens evaluated
    completion_tokens: int
    expected_prompt_tokens: int  # counted here with the sim's tokenizer
    bound_cached: int  # the upper bound: previous prompt + its reply, all cached
    sim_bound_cached: int  # what the sim can reuse at best: the previous prompt (see docs)
    request_id: str | None = None  # the balancer's X-Request-Id (joins its access log)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClientResult:
    turns: list[TurnRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    started: float = 0.0
    elapsed_s: float = 0.0  # until the last turn ended (drain included)


async def run_clients(base_url: str, scripts: Scripts) -> ClientResult:
    wl = scripts.workload
    result = ClientResult(started=time.monotonic())
    deadline = result.started + wl.duration_s
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=wl.request_timeout_s, sock_connect=10)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:
        seats = [asyncio.create_task(_seat(session, scripts, seat, deadline, result))
                 for seat in range(wl.conversations)]
        # Every seat ends by itself (deadline, request timeout); this bound only guards bugs.
        done, pending = await asyncio.wait(seats, timeout=wl.duration_s + 2 * wl.request_timeout_s + 30)
        for task in pending:
            task.cancel()
            result.errors.append("seat did not finish in time (cancelled)")
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                result.errors.append(f"seat crashed: {task.exception()!r}")
    result.elapsed_s = time.monotonic() - result.started
    return result


async def _seat(session: aiohttp.ClientSession, scripts: Scripts, seat: int, deadline: float,
                result: ClientResult) -> None:
    wl = scripts.workload
    await asyncio.sleep(min(scripts.start_delay(seat), max(0.0, deadline - time.monotonic())))
    k = 0
    while time.monotonic() < deadline and (wl.conversations_per_seat is None or k < wl.conversations_per_seat):
        conv = scripts.conversation(seat, k)
        k += 1
        await _conversation(session, scripts, seat, conv, deadline, result)


async def _conversation(session: aiohttp.ClientSession, scripts: Scripts, seat: int, conv: Conversation,
                        deadline: float, result: ClientResult) -> None:
    messages: list[dict[str, Any]] = [{"role": "system", "content": conv.system}]
    lengths = [message_tokens(messages[0])]  # tokens each message adds to the prompt
    for turn in range(conv.turns):
        if time.monotonic() >= deadline:
            return
        user = {"role": "user", "content": conv.users[turn]}
        messages.append(user)
        lengths.append(message_tokens(user))
        expected = sum(lengths)
        bound = expected - lengths[-1] if turn > 0 else 0  # everything but the new user message
        sim_bound = expected - lengths[-1] - lengths[-2] if turn > 0 else 0  # ... and but the reply
        try:
            record, reply = await _turn(session, scripts, messages, result.started)
        except TurnError as exc:
            result.errors.append(f"{conv.name} turn {turn}: {exc}")
            return  # the history is broken; the seat starts its next conversation
        record.seat, record.conversation, record.variant, record.turn = seat, conv.name, conv.variant, turn
        record.expected_prompt_tokens, record.bound_cached, record.sim_bound_cached = expected, bound, sim_bound
        result.turns.append(record)
        assistant = {"role": "assistant", "content": reply}
        messages.append(assistant)
        lengths.append(message_tokens(assistant))
        await asyncio.sleep(min(conv.think_s[turn], max(0.0, deadline - time.monotonic())))


async def _turn(session: aiohttp.ClientSession, scripts: Scripts, messages: list[dict[str, Any]],
                run_started: float) -> tuple[TurnRecord, str]:
    body = {"model": MODEL, "messages": messages, "stream": True, "max_tokens": scripts.workload.max_tokens,
            "stream_options": {"include_usage": True}}
    got = await stream_turn(session, body, shown_chars=200)
    prompt_tokens, cache_n, prompt_n, completion_tokens = got.ints()
    record = TurnRecord(
        seat=-1, conversation="", variant=-1, turn=-1, server=got.server,
        start_s=got.started - run_started, end_s=got.ended - run_started, ttft_s=got.ttft_s,
        prompt_tokens=prompt_tokens, cache_n=cache_n, prompt_n=prompt_n, completion_tokens=completion_tokens,
        expected_prompt_tokens=0, bound_cached=0, sim_bound_cached=0, request_id=got.request_id,
    )
    return record, got.text
