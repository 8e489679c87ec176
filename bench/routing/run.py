"""One command for the routing-quality bench.

    .venv/bin/python -m bench.routing.run                 # W1-W3, W2m x 4 policies (~12 min), updates docs/routing.md
    .venv/bin/python -m bench.routing.run --workloads W2 --policies round-robin,cache-aware --duration 20
    .venv/bin/python -m bench.routing.run --smoke         # seconds-long check that the bench works (CI)

For each (workload, policy) it starts 4 simulated llama-servers and a balancer with that
policy afresh (``stack.py``), runs the conversations (``client.py``) and summarises them
(``report.py``). Raw results go to ``bench/routing/results/*.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import report
from .client import run_clients
from .stack import ROOT, Stack
from .workload import FULL, SMOKE, Scripts

POLICIES = ("round-robin", "least-loaded", "classic", "cache-aware")
RESULTS = Path(__file__).resolve().parent / "results"
DOC = ROOT / "docs" / "routing.md"
DOC_TEMPLATE = "# Routing quality\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.routing.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="W1,W2,W3,W2m", help="comma-separated: W1,W2,W3,W2m "
                   "(W2m: W2 at moderate load, a reference beside the issue's workloads)")
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated: " + ",".join(POLICIES))
    p.add_argument("--duration", type=float, default=None, help="seconds per (workload, policy) run "
                   "(default: 30 for W1, 40 for W2 and W3)")
    p.add_argument("--think", type=_range, default=None, metavar="MIN-MAX",
                   help="think time between turns in seconds, e.g. 1-2 (default 0.2-1; W2m 2-5)")
    p.add_argument("--turns", type=_range, default=None, metavar="MIN-MAX",
                   help="turns per conversation, e.g. 4-10 (default 40-60 for W1, 4-10 for W2 and W3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cache-ram-prompts", type=int, default=0, metavar="N",
                   help="give every sim a host prompt cache of N prompts, like llama-server's default "
                        "--cache-ram (default 0: off, as the issue's targets assume)")
    p.add_argument("--identity", choices=("user", "ip"), default="user",
                   help="user: each conversation names a distinct user in its system prompt; "
                        "ip: no name, all conversations share the client's IP")
    p.add_argument("--kind", default="llama.cpp", help="servers' kind in the balancer config (default llama.cpp)")
    p.add_argument("--routing", action="append", default=[], metavar="KEY=VALUE",
                   help="override a balancer.routing knob, e.g. balance_abs_threshold=4 (repeatable)")
    p.add_argument("--balancer", action="append", default=[], metavar="KEY=VALUE",
                   help="override a balancer option, e.g. health_poll_interval_s=0.25 (repeatable)")
    p.add_argument("--smoke", action="store_true", help="tiny conversations, 2 turns, fast sims, in-process")
    p.add_argument("--inprocess", action="store_true", help="sims and balancer in this process (default: "
                   "two child processes; --smoke implies in-process)")
    p.add_argument("--diagnose", action="store_true", help="join each turn with the sim's record of it "
                   "(slot, pinned id_slot) in the JSON results; needs --identity user")
    p.add_argument("--balancer-src", type=Path, default=None, metavar="DIR",
                   help="run the balancer from this source tree (the folder holding llama_balancer/), "
                        "to measure a proposed change without installing it; not with --smoke/--inprocess")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/routing.md")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="run nothing: rewrite docs/routing.md's results from a saved results file")
    ns = p.parse_args(argv)
    if ns.balancer_src is not None and (ns.smoke or ns.inprocess):
        p.error("--balancer-src needs the balancer in its own process (not --smoke or --inprocess)")
    ns.workloads = _choices(ns.workloads, tuple(FULL), p)
    ns.policies = _choices(ns.policies, POLICIES, p)
    ns.routing_overrides = _overrides(ns.routing, p)
    ns.balancer_overrides = _overrides(ns.balancer, p)
    return ns


def _range(raw: str) -> tuple[float, float]:
    low, sep, high = raw.partition("-")
    try:
        pair = (float(low), float(high if sep else low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX, got {raw!r}") from None
    if pair[0] < 0 or pair[1] < pair[0]:
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, got {raw!r}")
    return pair


def _choices(raw: str, allowed: tuple[str, ...], p: argparse.ArgumentParser) -> list[str]:
    items = [x.strip() for x in raw.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        p.error(f"expected some of {','.join(allowed)}, got {raw!r}")
    return items


def _overrides(pairs: list[str], p: argparse.ArgumentParser) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            p.error(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


async def run_one(workload_name: str, policy: str, ns: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    wl = (SMOKE if ns.smoke else FULL)[workload_name]
    if ns.duration is not None:
        wl = replace(wl, duration_s=ns.duration)
    if ns.think is not None:
        wl = replace(wl, think_s=ns.think)
    if ns.turns is not None:
        wl = replace(wl, turns=(max(1, int(ns.turns[0])), max(1, int(ns.turns[1]))))
    if ns.cache_ram_prompts:
        wl = replace(wl, backends=tuple(replace(b, cache_ram_prompts=ns.cache_ram_prompts) for b in wl.backends))
    scripts = Scripts(wl, ns.seed, ns.identity)
    async with Stack(wl.backends, policy, ns.kind, workdir / f"{workload_name}-{policy}",
                     inprocess=ns.smoke or ns.inprocess, routing=ns.routing_overrides,
                     balancer=ns.balancer_overrides, balancer_src=ns.balancer_src) as stack:
        result = await run_clients(stack.url, scripts)
        access_log = stack.access_log
        source = stack.balancer_source
        slots = await stack.slot_log() if ns.diagnose else {}
    if ns.balancer_src is not None and not str(source or "").startswith(str(ns.balancer_src.resolve())):
        raise SystemExit(f"--balancer-src {ns.balancer_src}: the balancer ran {source} instead")
    turns = [t.to_json() for t in result.turns]
    logged = report.read_access_log(access_log)
    for turn in turns:
        entry = logged.get(turn["request_id"] or "", {})
        turn.update(reason=entry.get("reason"), queue_wait_ms=entry.get("queue_wait_ms"))
        turn.update(slots.get((turn["conversation"], turn["turn"]), {}))
    summary = report.summarize(turns, result.errors, wl.duration_s, result.elapsed_s)
    return {"summary": summary, "turns": turns, "errors": result.errors, "workload": wl.to_json(),
            "balancer_source": source}


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}"


async def main_async(ns: argparse.Namespace, argv: list[str]) -> int:
    started = time.monotonic()
    date = dt.datetime.now(dt.timezone.utc)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    workloads: dict[str, dict[str, Any]] = {}
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
        for wl in ns.workloads:
            for policy in ns.policies:
                t0 = time.monotonic()
                one = await run_one(wl, policy, ns, Path(tmp))
                s = one["summary"]
                results.setdefault(wl, {})[policy] = s
                workloads[wl] = one["workload"]
                raw[f"{wl}/{policy}"] = one
                print(f"{wl} {policy:13s} turns={s['turns']:4d} hit={_p(s['hit_ratio'])} bound={_p(s['bound_ratio'])} "
                      f"ttft p50={_f(s['ttft_p50_ms'])} p99={_f(s['ttft_p99_ms'])} ms "
                      f"tput={_f(s['turns_per_s'], '{:.2f}')} turns/s errors={s['errors']} "
                      f"mismatch={s['token_mismatches']} servers={s['by_server']} reasons={s['reasons']} "
                      f"({time.monotonic() - t0:.1f} s)", flush=True)
    took = time.monotonic() - started
    verdict_list = report.verdicts(results)
    meta = {
        "date": date.strftime("%Y-%m-%d %H:%M UTC"), "machine": _machine(), "took_s": took,
        "command": " ".join([".venv/bin/python -m bench.routing.run", *map(shlex.quote, argv)]),
        "seed": ns.seed, "identity": ns.identity, "kind": ns.kind, "smoke": ns.smoke,
        "routing": ns.routing_overrides, "balancer": ns.balancer_overrides,
        "balancer_src": str(ns.balancer_src) if ns.balancer_src else None,
    }
    markdown = report.render(meta, workloads, results, verdict_list)
    print()
    print(markdown)
    ns.out.mkdir(parents=True, exist_ok=True)
    stamp = date.strftime("%Y%m%dT%H%M%SZ")
    name = f"{'smoke' if ns.smoke else 'run'}-{stamp}.json"
    payload = {"meta": meta, "results": results, "verdicts": verdict_list, "workloads": workloads,
               "raw": raw, "markdown": markdown}
    (ns.out / name).write_text(json.dumps(payload, indent=1))
    (ns.out / f"latest{'-smoke' if ns.smoke else ''}.json").write_text(json.dumps(payload, indent=1))
    if not ns.smoke and not ns.no_doc:
        report.update_doc(DOC, markdown, DOC_TEMPLATE)
        print(f"\nupdated {DOC.relative_to(ROOT)}")
    errors = sum(s["errors"] for p in results.values() for s in p.values())
    return 1 if errors else 0


def _p(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:5.1f}%"


def _f(v: float | None, fmt: str = "{:.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def render_saved(path: Path) -> int:
    saved = json.loads(path.read_text())
    markdown = report.render(saved["meta"], saved["workloads"], saved["results"], report.verdicts(saved["results"]))
    print(markdown)
    report.update_doc(DOC, markdown, DOC_TEMPLATE)
    print(f"\nupdated {DOC.relative_to(ROOT)} from {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ns = parse_args(argv)
    if ns.render is not None:
        return render_saved(ns.render)
    coro = main_async(ns, argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    sys.exit(main())
