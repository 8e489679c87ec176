"""A real ``redis-server`` on a free loopback port, and balancer replicas as processes.

Redis is started by the tests themselves (never a mock); without the binary the tests skip,
except in CI (``.ci/run`` installs it), where they fail. Replicas run as
``python -m llama_balancer serve`` so that a real SIGKILL is possible.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llama_balancer.io.resp import RedisAddress, connect

REDIS = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)

# Intervals in tenths of a second, so failures and recoveries play out within a test. The
# timeouts stay generous: this 2-core machine stalls processes for hundreds of ms under load
# (a timed-out admission falls back to the degraded share, by design); failures here are
# Redis killed, which connections see at once.
FAST_SHARED = {"renew_interval_s": 0.2, "lease_ttl_s": 1.0, "liveness_ttl_s": 0.6, "admit_timeout_s": 1.0,
               "op_timeout_s": 1.0, "connect_timeout_s": 1.0, "retry_interval_s": 0.2}
REPLICA_OPTIONS = {"health_poll_interval_s": 0.05, "health_connect_timeout_s": 0.5, "health_read_timeout_s": 0.5,
                   "models_cache_ttl_s": 0.2, "gpu_sample_interval_s": 0.05, "access_log": "off",
                   "drain_grace_s": 0.5}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process without persistence; ``kill`` and ``start`` again on the same
    port (an empty Redis comes back, as after a crash without persistence)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS is not None
        log = open(self._dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self._dir), "--protected-mode", "no"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    async def call(self, *args: Any) -> Any:
        conn = await connect(RedisAddress.from_url(self.url), 2.0)
        try:
            return await conn.call(*args, timeout=2.0)
        finally:
            conn.close()


@pytest.fixture
def redis_server(tmp_path: Path):
    if REDIS is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required in CI (.ci/run installs it)")
        pytest.skip("redis-server not installed (apt install redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


class Replica:
    """``llama-balancer serve`` in its own process, its log in a file."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"{name}.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "llama_balancer", "serve", "--config", str(self.config_path),
                                      "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "INFO"],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)

    async def snapshot(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(self.url + "/llmhealth-snapshot") as response:
            return await response.json()

    async def metrics(self, http: aiohttp.ClientSession) -> str:
        async with http.get(self.url + "/metrics") as response:
            return await response.text()

    async def wait_ready(self, http: aiohttp.ClientSession, mode: str = "shared", timeout: float = 20.0) -> dict[str, Any]:
        """Until it serves, its backends are polled and shared state is in ``mode``."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None and self.proc.poll() is None, f"{self.name} exited: {self.log()[-2000:]}"
            try:
                snap = await self.snapshot(http)
                if snap["shared_state"]["mode"] == mode and all(b["models"] for b in snap["backends"]):
                    return snap
            except (aiohttp.ClientError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready in mode {mode!r}: {self.log()[-2000:]}")
            await asyncio.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def replicas(tmp_path: Path):
    """``replicas(config, n)`` starts n replica processes of one config; all stopped after."""
    started: list[Replica] = []

    def start(config: dict[str, Any], count: int) -> list[Replica]:
        group = [Replica(config, tmp_path, f"replica{len(started) + i}") for i in range(count)]
        for replica in group:
            replica.start()
        started.extend(group)
        return group

    yield start
    for replica in started:
        replica.stop()


def shared_config(sims: dict[str, Any], redis_url: str, request_max: int | None = None,
                  shared: dict[str, Any] | None = None, **balancer: Any) -> dict[str, Any]:
    """A config over sims (name -> RunningSim) for model ``sim-model``, sharing state in Redis."""
    servers = {name: {"addr": "http://127.0.0.1", "health-port": sim.port, "model-port": sim.port,
                      **({"request-max": request_max} if request_max else {})} for name, sim in sims.items()}
    options: dict[str, Any] = {**REPLICA_OPTIONS, **balancer}
    if shared is not None:
        options["shared_state"] = {"redis_url": redis_url, "key_prefix": "test:", **FAST_SHARED, **shared}
    return {"servers": servers, "models": {"sim-model.*": list(sims)}, "balancer": options}


def max_concurrent(events: list[dict[str, Any]]) -> int:
    """The most requests the sim was serving at once, from its own request log."""
    edges = sorted([(e["started"], 1) for e in events] + [(e["ended"], -1) for e in events if e["ended"] is not None],
                   key=lambda edge: (edge[0], edge[1]))
    current = most = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most
