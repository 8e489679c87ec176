"""The system under test: 4 simulated llama-servers and one llama-balancer in front of them.

``Stack`` starts both for one (workload, policy) run and stops them afterwards, as two child
processes (``python -m bench.routing.stack sims|balancer JSON``; each prints one JSON line
when it listens, and exits on SIGTERM, when its stdin closes, or after ``MAX_LIFE_S``) or,
for the smoke test, in this process. Fresh processes per run: no cache, sticky binding or
affinity survives from one policy's run into the next.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from .workload import MODEL, BackendSpec

ROOT = Path(__file__).resolve().parents[2]
MAX_LIFE_S = 1800.0  # a helper never outlives this, whatever happens to its parent
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_CONV = re.compile("「(conv[0-9_]+)」")


def balancer_config(ports: dict[str, int], policy: str, kind: str, access_log: str,
                    routing: dict[str, Any] | None = None, balancer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``server-list.json`` of one run: every backend on one pattern, in B1..B4 order."""
    servers = {name: {"addr": "http://127.0.0.1", "health-port": port, "model-port": port, "kind": kind}
               for name, port in ports.items()}
    # drain_grace_s only shortens the stop at the end of a run; nothing is in flight then.
    options: dict[str, Any] = {"access_log": access_log, "drain_grace_s": 1.0, **(balancer or {})}
    options["routing"] = {"policy": policy, **(routing or {})}
    return {"servers": servers, "models": {MODEL: list(ports)}, "balancer": options}


# ----------------------------------------------------------------------------- in-process parts

async def start_sims(specs: list[dict[str, Any]]) -> tuple[list[Any], dict[str, int]]:
    from llama_balancer.sim import SimConfig, start_sim

    sims, ports = [], {}
    try:
        for spec in specs:
            cfg = SimConfig(name=spec["name"], models=[MODEL], slots=spec["slots"], prompt_tps=spec["prompt_tps"],
                            gen_tps=spec["gen_tps"], ctx_per_slot=spec["ctx"], fast=spec["fast"],
                            cache_ram_prompts=spec.get("cache_ram_prompts", 0))
            sim = await start_sim(cfg, "127.0.0.1", 0)
            sims.append(sim)
            ports[spec["name"]] = sim.port
    except BaseException:
        for sim in sims:
            await sim.close()
        raise
    return sims, ports


async def start_balancer(config: dict[str, Any]) -> tuple[Any, int]:
    from llama_balancer.core.config import config_from_data
    from llama_balancer.runtime import Runtime

    runtime = Runtime(config_from_data(config), environ={})
    port = await runtime.start("127.0.0.1", 0)
    return runtime, port


async def wait_ready(base: str, backends: list[str], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until the balancer has polled every backend's health and model list once."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(base + "/llmhealth-snapshot") as resp:
                    snap = await resp.json(content_type=None)
                seen = backends_by_name(snap)
                last = {n: (seen.get(n, {}).get("status"), seen.get(n, {}).get("models")) for n in backends}
                if all(seen.get(n, {}).get("last") and seen.get(n, {}).get("models") for n in backends):
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.05)
    raise RuntimeError(f"balancer at {base} not ready after {timeout_s:g} s: {last}")


def backends_by_name(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``/llmhealth-snapshot``'s backends by server name: a mapping, or a list of entries
    that carry their ``name`` (the snapshot has had both shapes)."""
    backends = snapshot.get("backends") or {}
    if isinstance(backends, list):
        return {str(b.get("name")): b for b in backends if isinstance(b, dict)}
    return backends if isinstance(backends, dict) else {}


# ----------------------------------------------------------------------------- the stack

class Stack:
    """Sims + balancer for one run; ``async with Stack(...) as stack: stack.url``."""

    def __init__(self, backends: tuple[BackendSpec, ...], policy: str, kind: str, workdir: Path,
                 inprocess: bool = False, routing: dict[str, Any] | None = None,
                 balancer: dict[str, Any] | None = None, balancer_src: Path | None = None) -> None:
        self.balancer_src = balancer_src  # another source tree for the balancer (trying a patch)
        self.specs = [b.to_json() for b in backends]
        self.policy, self.kind, self.workdir, self.inprocess = policy, kind, workdir, inprocess
        self.routing, self.balancer_options = routing or {}, balancer or {}
        self.access_log = workdir / "access.log"
        self.ports: dict[str, int] = {}
        self.url = ""
        self.balancer_source: str | None = None
        self._procs: list[asyncio.subprocess.Process] = []
        self._sims: list[Any] = []
        self._runtime: Any = None

    async def __aenter__(self) -> "Stack":
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.inprocess:
                self._sims, self.ports = await start_sims(self.specs)
                self._runtime, port = await start_balancer(self._config())
            else:
                self.ports = (await self._spawn("sims", self.specs))["ports"]
                ready = await self._spawn("balancer", self._config())
                port, self.balancer_source = ready["port"], ready.get("source")
            self.url = f"http://127.0.0.1:{port}"
            await wait_ready(self.url, list(self.ports))
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def slot_log(self) -> dict[tuple[str, int], dict[str, Any]]:
        """(conversation, turn) -> the sim's view of that request: backend, slot, the id_slot
        the balancer pinned (-1: none), cache_n. From each sim's /sim/events (bench only)."""
        out: dict[tuple[str, int], dict[str, Any]] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            for name, port in self.ports.items():
                async with session.get(f"http://127.0.0.1:{port}/sim/events") as resp:
                    events = await resp.json(content_type=None)
                for event in events:
                    body = event.get("body") or {}
                    messages = body.get("messages") or []
                    found = _CONV.search(str(messages[0].get("content", ""))) if messages else None
                    if found is None:
                        continue
                    out[(found.group(1), (len(messages) - 2) // 2)] = {
                        "backend": name, "slot": event.get("slot"), "id_slot": body.get("id_slot", -1),
                        "sim_cache_n": event.get("cache_n"),
                    }
        return out

    def _config(self) -> dict[str, Any]:
        return balancer_config(self.ports, self.policy, self.kind, str(self.access_log),
                               self.routing, self.balancer_options)

    async def _spawn(self, role: str, arg: Any) -> dict[str, Any]:
        log = open(self.workdir / f"{role}.stderr", "wb")
        path = [str(ROOT)]
        if role == "balancer" and self.balancer_src is not None:
            path.insert(0, str(self.balancer_src))  # ahead of the installed (editable) package
        if os.environ.get("PYTHONPATH"):
            path.append(os.environ["PYTHONPATH"])
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.routing.stack", role, json.dumps(arg),
                cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
            )
        finally:
            log.close()
        self._procs.append(proc)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise RuntimeError(f"{role} helper did not start within {READY_TIMEOUT_S:g} s") from None
        if not line:
            err = (self.workdir / f"{role}.stderr").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{role} helper exited before listening:\n{err}")
        return json.loads(line)

    async def close(self) -> None:
        if self._runtime is not None:
            runtime, self._runtime = self._runtime, None
            await runtime.stop()
        for sim in self._sims:
            await sim.close()
        self._sims = []
        for proc in reversed(self._procs):
            await _stop(proc)
        self._procs = []


async def _stop(proc: asyncio.subprocess.Process) -> None:
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


# ----------------------------------------------------------------------------- helper processes

async def _helper(role: str, arg: Any) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:  # the parent is gone when our stdin closes
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    if role == "sims":
        sims, ports = await start_sims(arg)
        print(json.dumps({"ports": ports}), flush=True)
        try:
            await asyncio.wait_for(stop.wait(), MAX_LIFE_S)
        except asyncio.TimeoutError:
            pass
        finally:
            for sim in sims:
                await sim.close()
    elif role == "balancer":
        import llama_balancer

        runtime, port = await start_balancer(arg)
        print(json.dumps({"port": port, "source": llama_balancer.__file__}), flush=True)
        try:
            await asyncio.wait_for(stop.wait(), MAX_LIFE_S)
        except asyncio.TimeoutError:
            pass
        finally:
            await runtime.stop()
    else:
        raise SystemExit(f"unknown role {role!r}")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m bench.routing.stack sims|balancer JSON")
    coro = _helper(argv[0], json.loads(argv[1]))
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main(sys.argv[1:])
