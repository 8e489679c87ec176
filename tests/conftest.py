"""Shared fixtures: simulated llama-servers and the balancer, as real servers on loopback."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import aiohttp
import pytest

from llama_balancer.core.config import config_from_data
from llama_balancer.io.gpu import NoGpuSampler
from llama_balancer.runtime import Runtime
from llama_balancer.sim import RunningSim, SimConfig, start_sim

# Every interval in milliseconds, so health windows and caches settle fast in tests.
FAST_OPTIONS: dict[str, Any] = {
    "health_poll_interval_s": 0.02,
    "health_connect_timeout_s": 0.5,
    "health_read_timeout_s": 0.5,
    "models_cache_ttl_s": 0.05,
    "gpu_sample_interval_s": 0.02,
    "access_log": "off",
}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line on whether the real llama-server tier ran (tests/real)."""
    from tools import llama_server
    found = llama_server.binary()
    if found is not None:
        terminalreporter.write_line(f"real llama-server tier: on ({found})")
    else:
        terminalreporter.write_line("real llama-server tier: skipped, llama-server not built "
                                    "(`.venv/bin/python -m tools.llama_server build`, ~13 min once)")


def server_entry(sim: RunningSim, **extra: Any) -> dict[str, Any]:
    """A server-list.json entry for a sim: model API and /llmhealth share its port."""
    return {"addr": "http://127.0.0.1", "health-port": sim.port, "model-port": sim.port, **extra}


async def wait_until(predicate: Callable[[], Any], timeout: float = 3.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` (sync or async) until truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture
async def sims():
    """``await sims(name=..., models=[...], ...)`` starts a sim; all are closed afterwards."""
    started: list[RunningSim] = []

    async def start(**kwargs: Any) -> RunningSim:
        kwargs.setdefault("fast", True)
        sim = await start_sim(SimConfig(**kwargs))
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.close()


@pytest.fixture
async def balancer():
    """``await balancer(config_dict, settle=True)`` starts the balancer on an ephemeral port.

    With ``settle`` it waits until every server has a full health window and a model list.
    """
    started: list[Runtime] = []

    async def start(data: dict[str, Any], settle: bool = True, **runtime_kwargs: Any) -> Runtime:
        data = dict(data)
        data["balancer"] = {**FAST_OPTIONS, **data.get("balancer", {})}
        runtime_kwargs.setdefault("gpu_sampler", NoGpuSampler())
        runtime = Runtime(config_from_data(data), **runtime_kwargs)
        await runtime.start("127.0.0.1", 0)
        started.append(runtime)
        if settle:
            await wait_until(lambda: _settled(runtime))
        return runtime

    yield start
    for runtime in started:
        await runtime.stop()


def _front_at_rest(runtime: Runtime) -> bool:
    front = runtime.front
    if front is None:
        return True
    serving = [conn for conn in front.connections if conn.task is not None]
    return not serving and front.pool.open_connections == front.pool.idle_connections


def _settled(runtime: Runtime) -> bool:
    registry = runtime.context.registry
    window = runtime.context.config.balancer.health_window
    for name in registry.names():
        state = registry.state(name)
        if len(state.samples) < window:
            return False
        if state.served is None and state.samples[-1].status != "invalid":
            return False
    return True


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def snapshot(http: aiohttp.ClientSession, runtime: Runtime) -> dict[str, Any]:
    async with http.get(runtime.url + "/llmhealth-snapshot") as response:
        assert response.status == 200
        return await response.json()


def backend_of(snap: dict[str, Any], name: str) -> dict[str, Any]:
    """One server's entry of the snapshot's ``backends`` list (the old tool's shape)."""
    return next(b for b in snap["backends"] if b["name"] == name)


async def assert_nothing_in_flight(http: aiohttp.ClientSession, runtime: Runtime) -> None:
    """Every in-flight count is back to zero, as /llmhealth-snapshot reports it, no client
    connection of the native front is still serving a request, and every open backend
    connection is idle in the pool (none left half-way through an exchange)."""
    async def clear() -> bool:
        snap = await snapshot(http, runtime)
        return snap["inflight_total"] == 0 and all(
            b["total_inflight"] == 0 and not b["model_inflight"] for b in snap["backends"]
        ) and _front_at_rest(runtime)
    try:
        await wait_until(clear, timeout=2.0)
    except AssertionError:
        snap = await snapshot(http, runtime)
        front = runtime.front
        serving = [] if front is None else [c for c in front.connections if c.task is not None]
        raise AssertionError(
            f"left behind: inflight_total={snap['inflight_total']}, "
            f"backends={[(b['name'], b['total_inflight'], b['model_inflight']) for b in snap['backends']]}, "
            f"serving connections={len(serving)}, pool open/idle="
            f"{None if front is None else (front.pool.open_connections, front.pool.idle_connections)}") from None
