"""One streamed chat turn as both routing benches' clients read it (the simulator's and the
real llama-servers'): the SSE events, the first content's time, the finish's ``timings`` and
the ``usage`` chunk, each required."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


class TurnError(Exception):
    """A turn that did not give a whole answer (its message goes to the run's errors)."""


@dataclass
class Streamed:
    started: float  # monotonic, when the request was sent
    ended: float
    ttft_s: float
    text: str
    timings: dict[str, Any]
    usage: dict[str, Any]
    request_id: str | None
    server: str | None  # X-Sim-Server (the simulator's answers only)

    def ints(self) -> tuple[int, int, int, int]:
        """prompt_tokens, cache_n, prompt_n, completion_tokens."""
        return (int(self.usage.get("prompt_tokens", 0)), int(self.timings.get("cache_n", 0)),
                int(self.timings.get("prompt_n", 0)), int(self.usage.get("completion_tokens", 0)))


async def stream_turn(session: aiohttp.ClientSession, body: dict[str, Any], shown_chars: int = 300) -> Streamed:
    """POST ``body`` (a streamed chat request) and read its answer whole; TurnError unless it
    ends with [DONE] after content, timings and usage."""
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
                raise TurnError(f"HTTP {resp.status}: {(await resp.text())[:shown_chars]}")
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
                if event.get("timings"):  # finish chunk, or the usage chunk with include_usage
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
    return Streamed(t0, end, ttft, "".join(pieces), timings, usage, request_id, server)
