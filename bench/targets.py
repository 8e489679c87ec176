"""The proxies bench/harness.py measures: how each is started for one measurement, which pid
does its proxying (for CPU seconds and peak RSS), and the requests that must work through it
before the measurement counts.

- ``direct``: no proxy, the client talks to the backend.
- ``nginx``: Debian's, 1 worker; its worker's pid is measured.
- ``sglang-router``: PyPI ``sglang-router`` (Rust), ``cache_aware``, one tokio worker thread, the
  backend registered through its ``POST /workers`` API; the process holding its listening socket
  is measured.
- ``balancer``: ``llama-balancer serve`` with a generated ``server-list.json``.
- the reference points (``bench/reference/*.py``), each one Python process.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from procs import Procs, children, descendants, free_port, http, listening_pid, pin, wait_port
from report import REFERENCES
from sglang_launch import (INSTALL_HINT, SGLANG_ROUTER_ENV, register_worker, sglang_router_argv,
                           sglang_router_available)

BENCH = Path(__file__).resolve().parent
PY = sys.executable
MODEL = "bench-model"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # sglang-router colours its log lines

NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {conns}; use epoll; }}
http {{
  access_log {access_log};
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  upstream backend {{
    server 127.0.0.1:{backend};
    keepalive 1024;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not found:
        raise SystemExit("bench: nginx is not installed (bench/run installs it: apt-get install nginx)")
    return found


def nginx_connections(nofile: int) -> int:
    """nginx starts closing idle (and not-yet-requesting) connections once fewer than 1/16 of
    worker_connections are free; sized so that only the descriptor limit itself can bind."""
    return max(1024, nofile * 17 // 16 + 64)


class Target:
    """A running target for one measurement: port and the pid that does the proxying."""

    def __init__(self, name: str, port: int, pid: int | None, proc: subprocess.Popen | None,
                 log: Path | None = None) -> None:
        self.name, self.port, self.pid, self.proc, self.log = name, port, pid, proc, log

    def log_tail(self) -> list[str]:
        """Distinct warning/error lines the proxy logged (timestamps stripped), at most 5."""
        if self.log is None or not self.log.exists():
            return []
        seen: dict[str, None] = {}
        for line in ANSI.sub("", self.log.read_text(errors="replace")).splitlines():
            if any(w in line for w in ("[warn]", "[error]", "[crit]", "[alert]", "[emerg]", "WARNING", "ERROR")):
                seen.setdefault(line.split(" ", 2)[-1][:300], None)
        return list(seen)[:5]


def start_target(name: str, procs: Procs, backend_port: int, workdir: Path, nofile: int,
                 access_log: bool = False) -> Target:
    if name == "direct":
        return Target(name, backend_port, None, None)
    port = free_port()
    logpath = workdir / f"{name}-{time.monotonic_ns()}.log"
    log = open(logpath, "ab")
    if name in REFERENCES:
        script = BENCH / "reference" / (name.replace("-", "_") + ".py")
        proc = procs.start([*pin(0), PY, str(script), str(port), str(backend_port)], stdout=log, stderr=log)
        wait_port(port, proc)
        return Target(name, port, proc.pid, proc, logpath)
    if name == "nginx":
        ndir = Path(tempfile.mkdtemp(prefix="nginx-", dir=workdir))
        conf = ndir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=ndir, nofile=nofile, conns=nginx_connections(nofile),
                                          backend=backend_port, port=port,
                                          access_log=f"{ndir}/access.log" if access_log else "off"))
        proc = procs.start([*pin(0), nginx_binary(), "-p", str(ndir), "-c", str(conf), "-e", str(ndir / "error.log")],
                           stdout=log, stderr=log)
        wait_port(port, proc)
        deadline = time.monotonic() + 10
        while not children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        workers = children(proc.pid)
        if not workers:
            raise RuntimeError("nginx started no worker")
        return Target(name, port, workers[0], proc, ndir / "error.log")
    if name == "sglang-router":
        return start_sglang_router(procs, port, backend_port, log, logpath)
    config = {
        "servers": {"bench": {"addr": "http://127.0.0.1", "health-port": backend_port, "model-port": backend_port}},
        "models": {MODEL: ["bench"]},
        "fallback_server": "bench",
        # Same as nginx: no access log unless --access-log (then both write one to a file).
        "balancer": {"access_log": str(workdir / "balancer-access.log") if access_log else "off"},
    }
    cfg = workdir / "server-list.json"
    cfg.write_text(json.dumps(config, indent=2))
    # BENCH_BALANCER_EXE: another entry point to compare (an experiment, another build).
    exe = os.environ.get("BENCH_BALANCER_EXE") or str(Path(PY).parent / "llama-balancer")
    proc = procs.start([*pin(0), exe, "serve", "--config", str(cfg), "--host", "127.0.0.1",
                        "--port", str(port), "--log-level", "WARNING"], stdout=log, stderr=log)
    wait_port(port, proc)
    return Target(name, port, proc.pid, proc, logpath)


def sglang_router_installed() -> None:
    if not sglang_router_available():
        raise SystemExit(f"bench: sglang-router is not installed in {PY} (bench/run installs it: {INSTALL_HINT})")


def start_sglang_router(procs: Procs, port: int, backend_port: int, log: BinaryIO, logpath: Path) -> Target:
    """The router with no worker, then the backend registered through ``POST /workers`` (so that
    it serves ``/v1/models``). Its launcher is Python calling into Rust in-process; the pid that
    holds the listening socket is measured (the launcher's own, unless a later version forks)."""
    sglang_router_installed()
    argv = sglang_router_argv(port, free_port(), python=PY)
    proc = procs.start([*pin(0), *argv], env={**os.environ, **SGLANG_ROUTER_ENV}, stdout=log, stderr=log)
    wait_port(port, proc)
    register_worker(port, f"http://127.0.0.1:{backend_port}", MODEL)
    pid = listening_pid(port, [proc.pid, *descendants(proc.pid)])
    if pid is None:
        raise RuntimeError(f"sglang-router: no process of {proc.pid}'s tree holds the socket on port {port}")
    return Target("sglang-router", port, pid, proc, logpath)


# The warm-up stream: this many events this far apart, so that a target that drops or renames
# the fields the backend reads (max_tokens, metadata.bench_delay_ms) fails here, not silently.
CHECK_EVENTS, CHECK_DELAY_MS = 3, 25
ANSWERS_ITSELF = ("aiohttp-only",)  # a reference point with a canned stream of its own, no backend


def check_target(target: Target) -> None:
    """One plain and one streamed request must work before a measurement counts; the stream must
    have the asked-for events, spaced as asked."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, data = http("POST", target.port, "/v1/chat/completions", body)
    if status != 200 or b"chat.completion" not in data:
        raise RuntimeError(f"{target.name}: warm-up request failed: {status} {data[:200]!r}")
    body = json.dumps({"model": MODEL, "stream": True, "max_tokens": CHECK_EVENTS,
                       "metadata": {"bench_delay_ms": str(CHECK_DELAY_MS)},
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    t0 = time.monotonic()
    status, data = http("POST", target.port, "/v1/chat/completions", body)
    took_ms = (time.monotonic() - t0) * 1000
    events = data.count(b"data: {")
    if status != 200 or not data.rstrip().endswith(b"data: [DONE]"):
        raise RuntimeError(f"{target.name}: warm-up stream failed: {status} {data[-200:]!r}")
    if target.name in ANSWERS_ITSELF:
        return
    if events != CHECK_EVENTS or took_ms < (CHECK_EVENTS - 1) * CHECK_DELAY_MS * 0.9:
        raise RuntimeError(f"{target.name}: warm-up stream had {events} events in {took_ms:.0f} ms, not "
                           f"{CHECK_EVENTS} {CHECK_DELAY_MS} ms apart: max_tokens or metadata.bench_delay_ms "
                           "did not reach the backend")
