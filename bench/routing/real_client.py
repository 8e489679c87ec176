"""The clients of the real-server bench: every conversation at once, one asyncio task each,
each running its whole script (a fixed amount of work, so wall time compares policies).

A turn appends the user message, streams the answer (TTFT = time to the first event carrying
content), reads ``timings`` and ``usage`` from the last events (llama-server's own account
of what it reused), appends the reply and pauses (think time or an idle gap).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from .real_workload import MODEL, Conversation, Scripts
from .streamed import TurnError, stream_turn


@dataclass
class Turn:
    conversation: str
    group: int
    turn: int  # 0-based
    start_s: float  # since the run began
    end_s: float
    ttft_s: float
    prompt_tokens: int  # usage.prompt_tokens
    cache_n: int  # timings.cache_n: prompt tokens the server took from its cache
    prompt_n: int  # timings.prompt_n: prompt tokens it evaluated
    completion_tokens: int
    request_id: str | None  # the balancer's X-Request-Id (joins its access log)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClientResult:
    turns: list[Turn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    messages: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # each conversation's, at its end
    wall_s: float = 0.0  # from the start until the last turn ended


async def run_conversations(base_url: str, scripts: Scripts) -> ClientResult:
    wl = scripts.workload
    result = ClientResult()
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=wl.request_timeout_s, sock_connect=10)
    convs = scripts.conversations()
    # Each conversation ends by itself (its turns are bounded by the request timeout); this
    # bound only guards against bugs.
    bound = wl.start_s + max(c.turns for c in convs) * (wl.request_timeout_s + max(wl.idle_s + wl.think_s))
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(_conversation(session, scripts, c, started, result)) for c in convs]
        done, pending = await asyncio.wait(tasks, timeout=bound + 30)
        for task in pending:
            task.cancel()
            result.errors.append("conversation did not finish in time (cancelled)")
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                result.errors.append(f"conversation crashed: {task.exception()!r}")
    result.wall_s = max((t.end_s for t in result.turns), default=time.monotonic() - started)
    return result


async def _conversation(session: aiohttp.ClientSession, scripts: Scripts, conv: Conversation, started: float,
                        result: ClientResult) -> None:
    await asyncio.sleep(conv.start_s)
    messages: list[dict[str, str]] = [{"role": "system", "content": conv.system}]
    result.messages[conv.name] = messages
    for turn in range(conv.turns):
        messages.append({"role": "user", "content": conv.users[turn]})
        try:
            record, reply = await _turn(session, scripts, messages, started)
        except TurnError as exc:
            messages.pop()
            result.errors.append(f"{conv.name} turn {turn}: {exc}")
            return  # the history is broken; the conversation ends here
        record.conversation, record.group, record.turn = conv.name, conv.group, turn
        result.turns.append(record)
        messages.append({"role": "assistant", "content": reply})
        await asyncio.sleep(conv.think_s[turn])


async def _turn(session: aiohttp.ClientSession, scripts: Scripts, messages: list[dict[str, str]],
                started: float) -> tuple[Turn, str]:
    body = {"model": MODEL, "messages": messages, "stream": True, "max_tokens": scripts.workload.max_tokens,
            "temperature": 0, "stream_options": {"include_usage": True}}
    got = await stream_turn(session, body)
    prompt_tokens, cache_n, prompt_n, completion_tokens = got.ints()
    return Turn(
        conversation="", group=-1, turn=-1, start_s=got.started - started, end_s=got.ended - started,
        ttft_s=got.ttft_s, prompt_tokens=prompt_tokens, cache_n=cache_n, prompt_n=prompt_n,
        completion_tokens=completion_tokens, request_id=got.request_id,
    ), got.text
