"""Hot reload (file change, SIGHUP, POST /admin/reload) and graceful drain on SIGTERM."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

import aiohttp
import pytest

from tests.conftest import FAST_OPTIONS, server_entry, wait_until
from tests.compat.test_config import free_port

MODEL = "m"


def write_config(path, sims: dict, models: dict, **options) -> None:
    data = {"servers": {name: server_entry(sim) for name, sim in sims.items()}, "models": models,
            "balancer": {**FAST_OPTIONS, **options}}
    path.write_text(json.dumps(data))


async def routed_to(http, url: str, model: str = MODEL) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    async with http.post(url + "/v1/chat/completions", json=body) as response:
        assert response.status == 200
        return response.headers["X-Sim-Server"]


@pytest.fixture
async def two(sims):
    return {"PC1": await sims(name="PC1", models=[MODEL]), "PC2": await sims(name="PC2", models=[MODEL])}


async def test_a_changed_file_is_picked_up_and_swapped_in(two, balancer, http, tmp_path):
    path = tmp_path / "server-list.json"
    write_config(path, two, {MODEL: ["PC1"]}, config_poll_interval_s=0.05)
    from llama_balancer.runtime import load_config
    runtime = await balancer(json.loads(path.read_text()), config_path=str(path))
    assert await routed_to(http, runtime.url) == "PC1"
    write_config(path, two, {MODEL: ["PC2"]}, config_poll_interval_s=0.05)
    await wait_until(lambda: runtime.context.config.models == {MODEL: ["PC2"]})
    assert await routed_to(http, runtime.url) == "PC2"
    assert load_config(path).models == {MODEL: ["PC2"]}
    write_config(path, {"PC2": two["PC2"]}, {MODEL: ["PC2"]}, config_poll_interval_s=0.05)  # PC1 removed
    await wait_until(lambda: "PC1" not in runtime.context.config.servers)
    assert [entry["server"] for entry in runtime.context.affinity.snapshot()] == ["PC2"]


async def test_an_invalid_file_leaves_the_old_config_and_shows_the_error(two, balancer, http, tmp_path, caplog):
    path = tmp_path / "server-list.json"
    write_config(path, two, {MODEL: ["PC1"]}, config_poll_interval_s=60)
    runtime = await balancer(json.loads(path.read_text()), config_path=str(path))
    path.write_text(json.dumps({"servers": {"PC1": {"addr": "nope"}}}))
    async with http.post(runtime.url + "/admin/reload") as response:
        assert response.status == 422
        answer = await response.json()
    assert answer["ok"] is False and any("servers.PC1.addr" in e for e in answer["errors"])
    assert await routed_to(http, runtime.url) == "PC1"
    async with http.get(runtime.url + "/llmhealth-snapshot") as response:
        snap = await response.json()
    assert "servers.PC1.addr" in snap["config"]["error"]
    assert any("config reload refused" in r.message for r in caplog.records)
    write_config(path, two, {MODEL: ["PC2"]}, config_poll_interval_s=60)
    async with http.post(runtime.url + "/admin/reload") as response:
        assert (await response.json())["ok"] is True
    assert await routed_to(http, runtime.url) == "PC2"


async def test_requests_in_flight_finish_under_the_old_routing(sims, balancer, http, tmp_path):
    slow = await sims(name="PC1", models=[MODEL], fast=False, chunk_delay_s=0.02)
    other = await sims(name="PC2", models=[MODEL])
    path = tmp_path / "server-list.json"
    write_config(path, {"PC1": slow, "PC2": other}, {MODEL: ["PC1"]}, config_poll_interval_s=60)
    runtime = await balancer(json.loads(path.read_text()), config_path=str(path))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 30, "stream": True}
    async with http.post(runtime.url + "/v1/chat/completions", json=body) as response:
        await response.content.readline()
        write_config(path, {"PC2": other}, {MODEL: ["PC2"]}, config_poll_interval_s=60)  # PC1 removed
        assert (await runtime.reload())["ok"] is True
        rest = await response.read()
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert slow.events[-1]["outcome"] == "completed"
    assert runtime.context.registry.total_inflight() == 0
    assert await routed_to(http, runtime.url) == "PC2"


async def test_a_reload_applies_upstream_timeouts_and_pool_size_and_names_what_needs_a_restart(
        two, balancer, http, tmp_path, caplog):
    path = tmp_path / "server-list.json"
    write_config(path, two, {MODEL: ["PC1"]}, config_poll_interval_s=60, upstream_pool_size=1)
    runtime = await balancer(json.loads(path.read_text()), config_path=str(path))
    write_config(path, two, {MODEL: ["PC1"]}, config_poll_interval_s=30, upstream_pool_size=4,
                 upstream_connect_timeout_s=7, upstream_idle_timeout_s=9, max_headers=64, gpu_sample_interval_s=0.5)
    async with http.post(runtime.url + "/admin/reload") as response:
        answer = await response.json()
    assert answer["ok"] is True
    assert [entry.split(" ")[0] for entry in answer["needs_restart"]] == ["balancer.upstream_pool_size",
                                                                          "balancer.max_headers"]
    pool, client = runtime.front.pool, runtime.context.client
    assert (pool.limit, pool.connect_timeout_s, pool.idle_timeout_s) == (4, 7, 9)
    assert (client.request_timeout.sock_connect, client.request_timeout.sock_read) == (7, 9)
    assert runtime.context.gpu.interval_s == 0.5 and runtime._watcher.interval_s == 30
    assert any("needs a restart: balancer.upstream_pool_size" in r.getMessage() for r in caplog.records)
    caplog.clear()
    write_config(path, two, {MODEL: ["PC2"]}, config_poll_interval_s=30, upstream_pool_size=4,
                 upstream_connect_timeout_s=3, upstream_idle_timeout_s=9, max_headers=64, gpu_sample_interval_s=0.5)
    assert (await runtime.reload())["needs_restart"] == []
    assert pool.connect_timeout_s == 3 and not any("needs a restart" in r.getMessage() for r in caplog.records)


async def test_a_reload_resizing_the_pool_lets_a_waiting_request_go_and_closes_idle_connections_over_it(
        sims, balancer, http, tmp_path):
    slow = await sims(name="PC1", models=[MODEL], fast=False, chunk_delay_s=0.02)
    path = tmp_path / "server-list.json"
    write_config(path, {"PC1": slow}, {MODEL: ["PC1"]}, config_poll_interval_s=60, upstream_pool_size=1)
    runtime = await balancer(json.loads(path.read_text()), config_path=str(path))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 200, "stream": True}
    async with http.post(runtime.url + "/v1/chat/completions", json=body) as streaming:
        await streaming.content.readline()  # the pool's one connection carries this stream
        waiting = asyncio.create_task(routed_to(http, runtime.url))
        await wait_until(lambda: runtime.front.pool._waiters)
        write_config(path, {"PC1": slow}, {MODEL: ["PC1"]}, config_poll_interval_s=60, upstream_pool_size=2)
        assert (await runtime.reload())["ok"] is True
        assert await asyncio.wait_for(waiting, 3) == "PC1"
        assert not streaming.content.at_eof()  # it went while the stream still held the first
        await streaming.read()
    pool = runtime.front.pool
    await wait_until(lambda: pool.idle_connections == 2)
    write_config(path, {"PC1": slow}, {MODEL: ["PC1"]}, config_poll_interval_s=60, upstream_pool_size=1)
    assert (await runtime.reload())["ok"] is True
    await wait_until(lambda: pool.open_connections == 1 and pool.idle_connections == 1)
    assert await routed_to(http, runtime.url) == "PC1"


def spawn(config_path, port: int) -> asyncio.subprocess.Process:
    return asyncio.create_subprocess_exec(
        sys.executable, "-m", "llama_balancer", "serve", "--config", str(config_path),
        "--host", "127.0.0.1", "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def started(http, port: int, process) -> str:
    url = f"http://127.0.0.1:{port}"

    async def up() -> bool:
        assert process.returncode is None, await process.stderr.read()
        try:
            async with http.get(url + "/llmhealth-snapshot") as response:
                snap = await response.json()
                return all(b["models"] for b in snap["backends"])
        except aiohttp.ClientError:
            return False
    await wait_until(up, timeout=15)
    return url


async def test_sighup_reloads_the_file(two, http, tmp_path):
    path = tmp_path / "server-list.json"
    write_config(path, two, {MODEL: ["PC1"]}, config_poll_interval_s=600)
    port = free_port()
    process = await spawn(path, port)
    try:
        url = await started(http, port, process)
        write_config(path, two, {MODEL: ["PC2"]}, config_poll_interval_s=600)
        process.send_signal(signal.SIGHUP)

        async def moved() -> bool:
            return await routed_to(http, url) == "PC2"
        await wait_until(moved, timeout=5)
    finally:
        process.terminate()
        await process.wait()


async def stream_through(http, url: str, tokens: int) -> tuple[asyncio.Task, asyncio.Event]:
    first = asyncio.Event()

    async def run() -> bytes:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": tokens, "stream": True}
        async with http.post(url + "/v1/chat/completions", json=body) as response:
            head = await response.content.readline()
            first.set()
            return head + await response.read()
    task = asyncio.create_task(run())
    await asyncio.wait_for(first.wait(), 10)
    return task, first


async def test_sigterm_drains_a_stream_that_ends_within_the_grace(sims, http, tmp_path):
    slow = await sims(name="PC1", models=[MODEL], fast=False, chunk_delay_s=0.05)
    path = tmp_path / "server-list.json"
    write_config(path, {"PC1": slow}, {MODEL: ["PC1"]}, drain_grace_s=10)
    port = free_port()
    process = await spawn(path, port)
    url = await started(http, port, process)
    stream, _ = await stream_through(http, url, tokens=20)  # ~1 s
    process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    with pytest.raises(aiohttp.ClientConnectionError):  # no new connections while draining
        async with aiohttp.ClientSession() as fresh:
            await fresh.get(url + "/llmhealth")
    body = await asyncio.wait_for(stream, 10)
    assert body.rstrip().endswith(b"data: [DONE]")
    assert await asyncio.wait_for(process.wait(), 10) == 0
    assert slow.events[-1]["outcome"] == "completed"


async def test_sigterm_cuts_a_stream_that_outlives_the_grace(sims, http, tmp_path):
    slow = await sims(name="PC1", models=[MODEL], fast=False, chunk_delay_s=0.1)
    path = tmp_path / "server-list.json"
    write_config(path, {"PC1": slow}, {MODEL: ["PC1"]}, drain_grace_s=0.5)
    port = free_port()
    process = await spawn(path, port)
    url = await started(http, port, process)
    stream, _ = await stream_through(http, url, tokens=200)  # ~20 s
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 10) == 0
    assert time.monotonic() - signalled < 5
    try:
        body = await asyncio.wait_for(stream, 5)
    except aiohttp.ClientError:
        body = b""
    assert not body.rstrip().endswith(b"data: [DONE]")
    await wait_until(lambda: slow.events[-1]["outcome"] == "client_closed", timeout=3)
