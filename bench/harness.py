"""The benchmark: direct vs nginx vs sglang-router vs llama-balancer, interleaved, on pinned cores.

Run it through ``bench/run`` (which installs nginx, wrk and sglang-router when missing);
``--help`` lists the flags; how each target is started is in bench/targets.py. Every
measurement starts its proxy fresh (so peak RSS and CPU seconds belong to that measurement
only), pinned to core 0; the backend (bench/backend.py) and the load generators
(wrk, bench/streamgen.py) run on core 1. Results go to bench/results/*.json, a markdown
summary to stdout and, for full runs, into docs/performance.md between its markers.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procs import Procs, cpu_seconds, free_port, peak_rss_mib, pin, raise_nofile, wait_port
from report import (REFERENCE_SCENARIOS, REFERENCES, TARGETS, machine_facts, markdown, summarize, update_doc,
                    verdicts)
from targets import check_target, nginx_binary, sglang_router_installed, start_target

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable

# Scenario parameters (full run, then the seconds-long smoke used by CI).
FULL: dict[str, dict[str, Any]] = {
    "S1": {"kind": "wrk", "conns": 32, "duration": 10.0},
    "S2": {"kind": "loop", "concurrency": 64, "chunks": 32, "delay_ms": 5.0, "duration": 10.0, "procs": 1},
    "S3": {"kind": "once", "concurrency": 1000, "chunks": 20, "delay_ms": 500.0, "ramp": 1.0, "procs": 1},
    "S4": {"kind": "once", "concurrency": 10000, "chunks": 20, "delay_ms": 1500.0, "ramp": 4.0, "procs": 4},
}
SMOKE: dict[str, dict[str, Any]] = {
    "S1": {"kind": "wrk", "conns": 4, "duration": 1.0},
    "S2": {"kind": "loop", "concurrency": 4, "chunks": 4, "delay_ms": 5.0, "duration": 1.0, "procs": 1},
    "S3": {"kind": "once", "concurrency": 20, "chunks": 4, "delay_ms": 50.0, "ramp": 0.1, "procs": 1},
    "S4": {"kind": "once", "concurrency": 40, "chunks": 4, "delay_ms": 50.0, "ramp": 0.1, "procs": 2},
}


# ----------------------------------------------------------------------------- load

def run_wrk(port: int, p: dict[str, Any]) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("bench: wrk is not installed (bench/run installs it: apt-get install wrk)")
    duration = max(1, round(p["duration"]))
    argv = [*pin(1), wrk, "-t1", f"-c{p['conns']}", f"-d{duration}s", "--timeout", "10s",
            "-s", str(BENCH / "post.lua"), f"http://127.0.0.1:{port}/v1/chat/completions"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    raw = json.loads(line[len("BENCHJSON "):])
    errors = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
    return {
        "requests": raw["requests"], "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "lat_p50_ms": raw["p50_us"] / 1000, "lat_p99_ms": raw["p99_us"] / 1000,
        "errors": sum(errors.values()), "error_kinds": errors, "elapsed_s": raw["duration_us"] / 1e6,
    }


def run_streams(port: int, p: dict[str, Any]) -> dict[str, Any]:
    procs_n = max(1, min(p["procs"], p["concurrency"]))
    start_at = time.time() + 0.5 + 0.25 * procs_n
    share = [p["concurrency"] // procs_n + (1 if i < p["concurrency"] % procs_n else 0) for i in range(procs_n)]
    hold = p["chunks"] * p["delay_ms"] / 1000
    limit = p.get("duration", 0) + p.get("ramp", 0) + hold + 180
    children_ = []
    outdir = Path(tempfile.mkdtemp(prefix="streamgen-"))
    for i, n in enumerate(share):
        argv = [*pin(1), PY, str(BENCH / "streamgen.py"), "--port", str(port), "--concurrency", str(n),
                "--chunks", str(p["chunks"]), "--delay-ms", str(p["delay_ms"]), "--start-at", str(start_at), "--out", str(outdir / f"{i}.json")]
        argv += ["--once", "--ramp", str(p["ramp"])] if p["kind"] == "once" else ["--duration", str(p["duration"])]
        children_.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    outs = []
    try:
        for i, child in enumerate(children_):
            _, err = child.communicate(timeout=limit)
            if child.returncode != 0:
                raise RuntimeError(f"streamgen failed ({child.returncode}): {err.decode()[-800:]}")
            outs.append(json.loads((outdir / f"{i}.json").read_bytes()))
    finally:
        for child in children_:
            if child.poll() is None:
                child.kill()
                child.wait()
        shutil.rmtree(outdir, ignore_errors=True)
    ttft = sorted(t for o in outs for t in o["ttft_s"])
    total = sorted(t for o in outs for t in o["total_s"])
    kinds: dict[str, int] = {}
    for o in outs:
        for k, v in o["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    streams = sum(o["streams"] for o in outs)
    elapsed = max(o["elapsed_s"] for o in outs)
    return {
        "streams": streams, "expected_streams": p["concurrency"] if p["kind"] == "once" else None,
        "errors": sum(kinds.values()), "error_kinds": kinds, "elapsed_s": elapsed,
        "streams_per_s": streams / elapsed if elapsed > 0 else 0.0,
        "ttft_p50_ms": pct(ttft, 50) * 1000, "ttft_p99_ms": pct(ttft, 99) * 1000,
        "total_p50_ms": pct(total, 50) * 1000, "total_p99_ms": pct(total, 99) * 1000,
    }


def pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def measure(scenario: str, p: dict[str, Any], target_name: str, procs: Procs, backend: subprocess.Popen,
            backend_port: int, workdir: Path, nofile: int, profile_to: Path | None = None,
            access_log: bool = False) -> dict[str, Any]:
    target = start_target(target_name, procs, backend_port, workdir, nofile, access_log)
    spy = None
    try:
        check_target(target)
        pid = target.pid
        if profile_to is not None and target_name == "balancer" and pid:
            spy = start_profiler(procs, pid, profile_to)
        cpu0 = cpu_seconds(pid) if pid else 0.0
        bcpu0 = cpu_seconds(backend.pid)
        t0 = time.monotonic()
        result = run_wrk(target.port, p) if p["kind"] == "wrk" else run_streams(target.port, p)
        wall = time.monotonic() - t0
        result["backend_cpu_s"] = cpu_seconds(backend.pid) - bcpu0
        result["wall_s"] = wall
        if pid:
            result["proxy_cpu_s"] = cpu_seconds(pid) - cpu0
            result["proxy_peak_rss_mib"] = peak_rss_mib(pid)
            done = result["requests"] if p["kind"] == "wrk" else result["streams"]
            if done:
                result["proxy_cpu_us_per_req"] = result["proxy_cpu_s"] / done * 1e6
        if target.proc is not None and target.proc.poll() is not None:
            result["errors"] += 1
            result.setdefault("error_kinds", {})["proxy_died"] = 1
    finally:
        if spy is not None:
            procs.stop(spy, signal.SIGINT, timeout=60)
        if target.proc is not None:
            procs.stop(target.proc, signal.SIGQUIT if target_name == "nginx" else signal.SIGTERM)
    logged = target.log_tail()
    if logged:
        result["proxy_log"] = logged
    result.update(scenario=scenario, target=target_name)
    return result


def start_profiler(procs: Procs, pid: int, out: Path) -> subprocess.Popen:
    """py-spy (not a dependency: ``pip install py-spy``) on core 1, collapsed stacks to ``out``."""
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not os.access(spy, os.X_OK):
        raise SystemExit("bench: --profile needs py-spy (.venv/bin/pip install py-spy)")
    proc = procs.start([*pin(1), spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                        *(["--native"] if os.environ.get("BENCH_PYSPY_NATIVE") else ["--nonblocking"]), "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attach before the load starts
    return proc


# ----------------------------------------------------------------------------- report

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description="direct vs nginx vs sglang-router vs llama-balancer")
    ap.add_argument("--scenarios", default="S1,S2,S3,S4")
    ap.add_argument("--targets", default=",".join(TARGETS + REFERENCES),
                    help=f"comma-separated (default: all); {', '.join(REFERENCES)} are reference points "
                         "(bench/reference/), never judged")
    ap.add_argument("--rounds", type=int, default=None, help="default 2 (1 with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="seconds-long run that checks the harness works")
    ap.add_argument("--out", default=str(BENCH / "results"), help="folder for the JSON results")
    ap.add_argument("--doc", default=None, help="markdown file to update (default docs/performance.md; "
                                                "not with --smoke)")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--s4-streams", type=int, default=None, help="override S4's concurrency")
    ap.add_argument("--access-log", action="store_true",
                    help="nginx and the balancer both write an access log to a file (default: both off)")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the balancer during each of its measurements (results folder, *.collapsed)")
    args = ap.parse_args(argv)
    scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    params = {s: dict((SMOKE if args.smoke else FULL)[s]) for s in scenarios}
    rounds = args.rounds or (1 if args.smoke else 2)
    notes: list[str] = []
    nofile = raise_nofile()
    if "S4" in params:
        if args.s4_streams:
            params["S4"]["concurrency"] = args.s4_streams
        # A proxy holds two descriptors per stream (client + upstream) in one process.
        most = (nofile - 200) // 2
        if "direct" not in targets or len(targets) > 1:
            if params["S4"]["concurrency"] > most:
                notes.append(f"S4 ran {most} streams, not {params['S4']['concurrency']}: RLIMIT_NOFILE is "
                             f"{nofile} here and cannot be raised (no CAP_SYS_RESOURCE); a single-process proxy "
                             f"needs 2 descriptors per stream.")
                params["S4"]["concurrency"] = most
    if (os.cpu_count() or 1) < 2:
        notes.append("fewer than 2 cores: nothing was pinned.")
    for t in targets:
        if t not in TARGETS + REFERENCES:
            raise SystemExit(f"bench: unknown target {t!r} (known: {', '.join(TARGETS + REFERENCES)})")
    if "nginx" in targets:
        nginx_binary()
    if "sglang-router" in targets:
        sglang_router_installed()
    workdir = Path(tempfile.mkdtemp(prefix="llama-bench-"))
    procs = Procs()
    stamp = dt.datetime.now(dt.timezone.utc)
    command = "bench/run" + ("" if argv is None and len(sys.argv) <= 1 else " " + " ".join(argv if argv is not None
                                                                                         else sys.argv[1:]))
    meta = {"date": stamp.strftime("%Y-%m-%d %H:%M UTC"), "command": command, "rounds": rounds,
            "access_log": args.access_log,
            "smoke": args.smoke, "scenarios": params, "targets": targets, "nofile": nofile, "notes": notes,
            "machine": machine_facts()}
    runs: list[dict[str, Any]] = []
    backend_port = free_port()
    try:
        blog = open(workdir / "backend.log", "ab")
        backend = procs.start([*pin(1), PY, str(BENCH / "backend.py"), "--port", str(backend_port)],
                              stdout=blog, stderr=blog)
        wait_port(backend_port, backend)
        for s in scenarios:
            for r in range(rounds):
                order = targets if r % 2 == 0 else list(reversed(targets))  # interleave, alternate order
                for t in order:
                    if t in REFERENCES and s not in REFERENCE_SCENARIOS[t]:
                        continue
                    print(f"[bench] {s} round {r + 1}/{rounds}: {t} ...", file=sys.stderr, flush=True)
                    prof = (Path(args.out) / f"profile-{s}-r{r + 1}.collapsed") if args.profile else None
                    if prof is not None:
                        prof.parent.mkdir(parents=True, exist_ok=True)
                    res = measure(s, params[s], t, procs, backend, backend_port, workdir, nofile, prof,
                                  args.access_log)
                    if prof is not None and t == "balancer" and prof.exists():
                        from profile_top import summarise
                        res["profile"] = str(prof)
                        print(summarise(str(prof), 12), file=sys.stderr)
                    res["round"] = r + 1
                    runs.append(res)
                    print(f"[bench]   {brief(res)}", file=sys.stderr, flush=True)
                    time.sleep(0.1 if args.smoke else 2.0)  # let sockets settle between targets
    finally:
        procs.stop_all()
    summary = summarize(runs, scenarios)
    checks = verdicts(summary)
    table = markdown(meta, summary, checks)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = ("smoke-" if args.smoke else "run-") + stamp.strftime("%Y%m%dT%H%M%SZ") + ".json"
    result = {"meta": meta, "runs": [{k: v for k, v in r.items()} for r in runs], "summary": summary,
              "checks": checks}
    (out_dir / name).write_text(json.dumps(result, indent=1))
    (out_dir / ("latest-smoke.json" if args.smoke else "latest.json")).write_text(json.dumps(result, indent=1))
    print(table)
    print(f"[bench] results: {out_dir / name}", file=sys.stderr)
    if not args.no_doc and (args.doc or not args.smoke):
        update_doc(Path(args.doc or ROOT / "docs" / "performance.md"), meta, table, checks)
        print(f"[bench] updated {args.doc or 'docs/performance.md'}", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def brief(r: dict[str, Any]) -> str:
    keys = ("rps", "ttft_p50_ms", "ttft_p99_ms", "streams_per_s", "streams", "errors", "proxy_cpu_s",
            "proxy_cpu_us_per_req", "proxy_peak_rss_mib", "backend_cpu_s")
    return " ".join(f"{k}={r[k]:.2f}" if isinstance(r.get(k), float) else f"{k}={r.get(k)}"
                    for k in keys if k in r) + (f" kinds={r['error_kinds']}" if r.get("error_kinds") else "") \
        + (f" log={r['proxy_log']}" if r.get("proxy_log") else "")


if __name__ == "__main__":
    sys.exit(main())
