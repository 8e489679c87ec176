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
import orjson

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


class TurnError(Exception):
    pass


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
    t0 = time.monotonic()
    ttft: float | None = None
    pieces: list[str] = []
    timings: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    done = False
    try:
        async with session.post("/v1/chat/completions", data=orjson.dumps(body),
                                headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                raise TurnError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            server = resp.headers.get("X-Sim-Server")
            request_id = resp.headers.get("X-Request-Id")
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                event = orjson.loads(data)
                for choice in event.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if ttft is None:
                            ttft = time.monotonic() - t0
                        pieces.append(content)
                if event.get("timings"):
                    timings = event["timings"]
                if event.get("usage"):
                    usage = event["usage"]
    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
        raise TurnError(f"{type(exc).__name__}: {exc}") from None
    end = time.monotonic()
    if not done:
        raise TurnError("stream ended without [DONE]")
    if ttft is None or timings is None or usage is None:
        raise TurnError(f"incomplete answer: ttft={ttft} timings={timings is not None} usage={usage is not None}")
    record = TurnRecord(
        seat=-1, conversation="", variant=-1, turn=-1, server=server,
        start_s=t0 - run_started, end_s=end - run_started, ttft_s=ttft,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        cache_n=int(timings.get("cache_n", 0)), prompt_n=int(timings.get("prompt_n", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        expected_prompt_tokens=0, bound_cached=0, sim_bound_cached=0, request_id=request_id,
    )
    return record, "".join(pieces)
