"""The processes of one real-server run: llama-servers, and in front of them either
llama-balancer (``python -m bench.routing.stack balancer``) or sglang-router.

Every process is started here and stopped here, by its own pid (SIGTERM, then SIGKILL after
a bound); each also gets SIGKILL from the kernel if the bench dies (``PR_SET_PDEATHSIG``),
and listens on 127.0.0.1 only.
"""
from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from ..sglang_launch import SGLANG_ROUTER_ENV, sglang_router_argv
from .real_workload import MODEL, ServerSpec
from .stack import ROOT, wait_ready

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
MODELS_DIR = Path(__file__).resolve().parent / "results" / "models"


def llama_server_binary() -> Path | None:
    """The cached llama-server of ``tools/llama_server.py`` (None when not built here)."""
    sys.path.insert(0, str(ROOT))
    try:
        from tools.llama_server import binary
    except ImportError:
        return None
    return binary()


def model_file(spec: ServerSpec) -> Path:
    """The random-weight GGUF for ``spec``'s size, written once by ``tools.llama_server model``."""
    path = MODELS_DIR / f"tiny-{spec.model_key}.gguf"
    if not path.is_file():
        MODELS_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.gguf")
        subprocess.run([sys.executable, "-m", "tools.llama_server", "model", str(tmp), "--embd", str(spec.embd),
                        "--layers", str(spec.layers)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, timeout=300)
        os.replace(tmp, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        # PR_SET_PDEATHSIG: SIGKILL, since a llama-server was seen to outlive a SIGTERM.
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


class Proc:
    """One child process, its stderr in a file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 stdin_pipe: bool = False) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.env = {**os.environ, **(env or {})}
        self.stdin_pipe = stdin_pipe
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, stdout_pipe: bool = False) -> None:
        with open(self.log, "wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, cwd=ROOT, env=self.env, stderr=err,
                stdin=asyncio.subprocess.PIPE if self.stdin_pipe else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stdout_pipe else err, preexec_fn=_die_with_parent)

    def tail(self, n: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            try:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except ProcessLookupError:
                pass
            except asyncio.TimeoutError:
                proc.kill()
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        if proc.stdin is not None:
            proc.stdin.close()


async def _wait_http(url: str, proc: Proc, ok: Any = None, timeout_s: float = READY_TIMEOUT_S) -> Any:
    """Poll ``url`` until it answers 200 (and ``ok(json)`` holds); bounded by ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            if proc.proc is not None and proc.proc.returncode is not None:
                raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}):\n{proc.tail()}")
            try:
                async with session.get(url) as resp:
                    body = await resp.json(content_type=None)
                    last = (resp.status, body)
                    if resp.status == 200 and (ok is None or ok(body)):
                        return body
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name}: {url} not ready after {timeout_s:g} s: {last}\n{proc.tail()}")


class LlamaServers:
    """The run's llama-servers, fresh (empty caches) every time."""

    def __init__(self, specs: tuple[ServerSpec, ...], workdir: Path, cache_ram: bool,
                 threads: int = 1) -> None:
        self.specs, self.workdir, self.cache_ram, self.threads = specs, workdir, cache_ram, threads
        self.ports: dict[str, int] = {}
        self.procs: list[Proc] = []

    async def start(self) -> None:
        binary = llama_server_binary()
        if binary is None:
            raise RuntimeError("no llama-server binary: run `python -m tools.llama_server build`")
        for spec in self.specs:
            port = free_port()
            argv = [str(binary), "-m", str(model_file(spec)), "--alias", MODEL, "--host", "127.0.0.1",
                    "--port", str(port), "--parallel", str(spec.slots), "-c", str(spec.ctx),
                    "-t", str(self.threads), "--metrics"]
            if not self.cache_ram:
                argv += ["--cache-ram", "0"]
            proc = Proc(f"llama-server {spec.name}", argv, self.workdir / f"llama-{spec.name}.log")
            self.procs.append(proc)
            await proc.start()
            self.ports[spec.name] = port
        for spec, proc in zip(self.specs, self.procs):
            await _wait_http(f"http://127.0.0.1:{self.ports[spec.name]}/health", proc)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    async def metrics(self) -> dict[str, dict[str, float]]:
        """Each server's own Prometheus counters (``llamacpp:`` names, prefix dropped)."""
        out: dict[str, dict[str, float]] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for name in self.ports:
                async with session.get(self.url(name) + "/metrics") as resp:
                    text = await resp.text()
                values: dict[str, float] = {}
                for line in text.splitlines():
                    if line.startswith("llamacpp:"):
                        key, _, value = line.partition(" ")
                        try:
                            values[key.removeprefix("llamacpp:")] = float(value)
                        except ValueError:
                            pass
                out[name] = values
        return out

    async def stop(self) -> None:
        for proc in reversed(self.procs):
            await proc.stop()
        self.procs = []


def balancer_config(ports: dict[str, int], policy: str, access_log: str, kind: str | None,
                    routing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The old tool's seed format: no ``kind`` unless asked, so the product's default detects it."""
    servers: dict[str, dict[str, Any]] = {}
    for name, port in ports.items():
        servers[name] = {"addr": "http://127.0.0.1", "health-port": port, "model-port": port}
        if kind:
            servers[name]["kind"] = kind
    return {"servers": servers, "models": {MODEL: list(ports)},
            "balancer": {"access_log": access_log, "drain_grace_s": 1.0,
                         "routing": {"policy": policy, **(routing or {})}}}


class Front:
    """What the clients talk to: llama-balancer with a policy, or sglang-router."""

    def __init__(self, policy: str, servers: LlamaServers, workdir: Path, kind: str | None,
                 routing: dict[str, Any] | None = None, balancer_src: Path | None = None) -> None:
        self.policy, self.servers, self.workdir, self.kind = policy, servers, workdir, kind
        self.balancer_src = balancer_src  # the folder holding llama_balancer/ (None: the installed one)
        self.balancer_source: str | None = None
        self.routing = routing or {}
        self.access_log = workdir / "access.log"
        self.url = ""
        self.config: dict[str, Any] = {}
        self.prometheus_port = 0
        self.proc: Proc | None = None

    async def start(self) -> None:
        if self.policy == "sglang-router":
            await self._start_sglang()
        else:
            await self._start_balancer()

    async def _start_balancer(self) -> None:
        self.config = balancer_config(self.servers.ports, self.policy, str(self.access_log), self.kind, self.routing)
        self.proc = Proc("llama-balancer", [sys.executable, "-m", "bench.routing.stack", "balancer",
                                            json.dumps(self.config)],
                         self.workdir / "balancer.log", stdin_pipe=True,
                         env={"PYTHONPATH": os.pathsep.join([str(self.balancer_src)] * bool(self.balancer_src) + [str(ROOT)])})
        await self.proc.start(stdout_pipe=True)
        assert self.proc.proc is not None and self.proc.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.proc.stdout.readline(), READY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise RuntimeError(f"balancer did not listen within {READY_TIMEOUT_S:g} s:\n{self.proc.tail()}") from None
        if not line:
            raise RuntimeError(f"balancer exited before listening:\n{self.proc.tail()}")
        ready = json.loads(line)
        self.url, self.balancer_source = f"http://127.0.0.1:{ready['port']}", ready.get("source")
        if self.balancer_src is not None and not str(self.balancer_source).startswith(str(self.balancer_src)):
            raise RuntimeError(f"the balancer ran {self.balancer_source}, not the one under {self.balancer_src}")
        await wait_ready(self.url, list(self.servers.ports), timeout_s=READY_TIMEOUT_S)

    async def _start_sglang(self) -> None:
        port, self.prometheus_port = free_port(), free_port()
        urls = [self.servers.url(name) for name in self.servers.ports]  # B1 first, like the balancer's list
        argv = sglang_router_argv(port, self.prometheus_port, urls)
        self.config = {"argv": argv[1:], "env": SGLANG_ROUTER_ENV}
        self.proc = Proc("sglang-router", argv, self.workdir / "sglang-router.log", env=SGLANG_ROUTER_ENV)
        await self.proc.start()
        self.url = f"http://127.0.0.1:{port}"
        await _wait_http(self.url + "/workers", self.proc, ok=lambda body: len(
            [w for w in body.get("workers", []) if w.get("is_healthy")]) == len(urls))

    async def per_server_requests(self) -> dict[str, int] | None:
        """sglang-router's own count of requests sent to each worker (its Prometheus listener)."""
        if self.policy != "sglang-router":
            return None
        names = {self.servers.url(n): n for n in self.servers.ports}
        counts = {n: 0 for n in self.servers.ports}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(f"http://127.0.0.1:{self.prometheus_port}/metrics") as resp:
                text = await resp.text()
        for line in text.splitlines():
            if line.startswith("smg_worker_cb_outcomes_total{"):
                labels, _, value = line.rpartition(" ")
                for url, name in names.items():
                    if f'worker="{url}"' in labels:
                        counts[name] += int(float(value))
        return counts

    async def stop(self) -> None:
        if self.proc is not None:
            await self.proc.stop()
            self.proc = None
