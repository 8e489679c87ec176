"""What Redis adds per request: one balancer with and without shared state, same run.

    .venv/bin/python bench/shared_state.py             # S1c1, S1, S2; 2 rounds (~3 min)
    .venv/bin/python bench/shared_state.py --smoke     # seconds

Both variants run the same config (one server with ``request-max`` 100000, so every request
takes a lease, and sticky/affinity records are written) and differ only in
``balancer.shared_state``; they alternate in every round. ``redis-server`` (no persistence)
runs on core 1 with the backend and the load generators, the balancer on core 0, as in
bench/harness.py, whose load generators this uses. S1c1 is S1 with one connection: the
latency a request sees with nothing queued, the plainest measure of the added round trip.
Results: a markdown table on stdout, JSON in bench/results/shared-state-*.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from harness import BENCH, FULL, PY, SMOKE, run_streams, run_wrk
from procs import Procs, cpu_seconds, free_port, pin, wait_port
from targets import Target, check_target

SCENARIOS = {"S1c1": {**FULL["S1"], "conns": 1}, "S1": FULL["S1"], "S2": FULL["S2"]}
SMOKE_SCENARIOS = {"S1c1": {**SMOKE["S1"], "conns": 1}, "S1": SMOKE["S1"], "S2": SMOKE["S2"]}
# "+redis": the product's defaults (a reserve of leases where request-max is far); "+redis,
# no reserve": lease_reserve 0, a Redis round trip on every admission (what a request-max
# near the load costs).
VARIANTS = ("balancer", "balancer+redis", "balancer+redis, no reserve")


def start_redis(procs: Procs, workdir: Path) -> int:
    redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    procs.start([*pin(1), redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(workdir)], stdout=open(workdir / "redis.log", "ab"), stderr=subprocess_stdout())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def subprocess_stdout() -> int:
    import subprocess
    return subprocess.STDOUT


def start_balancer(variant: str, procs: Procs, backend_port: int, redis_port: int, workdir: Path) -> Target:
    balancer: dict[str, Any] = {"access_log": "off"}
    if variant != "balancer":
        balancer["shared_state"] = {"redis_url": f"redis://127.0.0.1:{redis_port}/0",
                                    "key_prefix": f"bench-{time.monotonic_ns()}:"}
        if variant.endswith("no reserve"):
            balancer["shared_state"]["lease_reserve"] = 0
    config = {"servers": {"bench": {"addr": "http://127.0.0.1", "health-port": backend_port,
                                    "model-port": backend_port, "request-max": 100000}},
              "models": {"bench-model": ["bench"]}, "fallback_server": "bench", "balancer": balancer}
    slug = variant.replace(", ", "-").replace(" ", "-")
    path = workdir / f"{slug}.json"
    path.write_text(json.dumps(config))
    port = free_port()
    log = workdir / f"{slug}-{time.monotonic_ns()}.log"
    proc = procs.start([*pin(0), str(Path(PY).parent / "llama-balancer"), "serve", "--config", str(path), "--host",
                        "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
                       stdout=open(log, "ab"), stderr=subprocess_stdout())
    wait_port(port, proc)
    return Target(variant, port, proc.pid, proc, log)


def measure(scenario: str, p: dict[str, Any], variant: str, procs: Procs, backend_port: int, redis_port: int,
            workdir: Path) -> dict[str, Any]:
    target = start_balancer(variant, procs, backend_port, redis_port, workdir)
    try:
        check_target(target)
        time.sleep(0.5)  # shared state connected, first renewals done
        cpu0 = cpu_seconds(target.pid) if target.pid else 0.0
        result = run_wrk(target.port, p) if p["kind"] == "wrk" else run_streams(target.port, p)
        result["proxy_cpu_s"] = cpu_seconds(target.pid) - cpu0 if target.pid else None
    finally:
        if target.proc is not None:
            procs.stop(target.proc, signal.SIGTERM)
    logged = target.log_tail()
    if logged:
        result["proxy_log"] = logged
    result.update(scenario=scenario, target=variant)
    return result


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def table(runs: list[dict[str, Any]], scenarios: list[str]) -> str:
    lines = ["| scenario | variant | p50 ms | p99 ms | rate /s | errors | proxy CPU s |", "|---|---|---|---|---|---|---|"]
    added = []
    for s in scenarios:
        rows = {}
        for v in VARIANTS:
            got = [r for r in runs if r["scenario"] == s and r["target"] == v]
            if not got:
                continue
            p50 = median([r.get("lat_p50_ms", r.get("ttft_p50_ms", 0.0)) for r in got])
            p99 = median([r.get("lat_p99_ms", r.get("ttft_p99_ms", 0.0)) for r in got])
            rate = median([r.get("rps", r.get("streams_per_s", 0.0)) for r in got])
            cpu = median([r.get("proxy_cpu_s") or 0.0 for r in got])
            errors = sum(r["errors"] for r in got)
            rows[v] = (p50, p99, rate)
            lines.append(f"| {s} | {v} | {p50:.2f} | {p99:.2f} | {rate:.0f} | {errors} | {cpu:.2f} |")
        if "balancer" in rows:
            a50, a99, arate = rows["balancer"]
            for v in VARIANTS[1:]:
                if v in rows:
                    b50, b99, brate = rows[v]
                    added.append(f"| {s} | added by {v[len('balancer'):]} | {b50 - a50:+.2f} | {b99 - a99:+.2f} | "
                                 f"{brate / arate:.2f}x | | |")
    return "\n".join(lines + added)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="what shared state in Redis adds per request")
    ap.add_argument("--scenarios", default="S1c1,S1,S2")
    ap.add_argument("--rounds", type=int, default=None, help="default 2 (1 with --smoke)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(BENCH / "results"))
    args = ap.parse_args(argv)
    params = SMOKE_SCENARIOS if args.smoke else SCENARIOS
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    rounds = args.rounds or (1 if args.smoke else 2)
    import tempfile
    workdir = Path(tempfile.mkdtemp(prefix="llama-bench-shared-"))
    procs = Procs()
    runs: list[dict[str, Any]] = []
    try:
        backend_port = free_port()
        backend = procs.start([*pin(1), PY, str(BENCH / "backend.py"), "--port", str(backend_port)],
                              stdout=open(workdir / "backend.log", "ab"), stderr=subprocess_stdout())
        wait_port(backend_port, backend)
        redis_port = start_redis(procs, workdir)
        for s in scenarios:
            for r in range(rounds):
                for v in VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]:  # a new order each round
                    print(f"[bench] {s} round {r + 1}/{rounds}: {v} ...", file=sys.stderr, flush=True)
                    res = measure(s, params[s], v, procs, backend_port, redis_port, workdir)
                    res["round"] = r + 1
                    runs.append(res)
                    time.sleep(0.1 if args.smoke else 1.0)
    finally:
        procs.stop_all()
    text = table(runs, scenarios)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"shared-state-{stamp}.json").write_text(json.dumps({"runs": runs, "table": text}, indent=1))
    print(text)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r["errors"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
