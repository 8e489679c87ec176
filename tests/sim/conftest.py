"""Fixtures for the simulated llama-server tests: real sims on 127.0.0.1, one client session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from llama_balancer.sim import RunningSim, SimConfig, start_sim

MakeSim = Callable[..., Awaitable[RunningSim]]


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    """Start sims with SimConfig keyword arguments; all are closed after the test."""
    sims: list[RunningSim] = []

    async def make(**kwargs: Any) -> RunningSim:
        sim = await start_sim(SimConfig(**kwargs))
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def sse() -> Callable[[str], list[Any]]:
    """Parse an SSE body into its payloads: JSON objects, or the string "[DONE]"."""

    def parse(text: str) -> list[Any]:
        payloads: list[Any] = []
        for block in text.split("\n\n"):
            if not block.strip():
                continue
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            payloads.append(data if data == "[DONE]" else orjson.loads(data))
        return payloads

    return parse


@pytest.fixture
def eventually() -> Callable[..., Awaitable[None]]:
    """Wait until an (async) check passes, failing with its last error after a timeout."""

    async def wait(check: Callable[[], Awaitable[bool]], timeout: float = 1.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if await check():
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.01)

    return wait
