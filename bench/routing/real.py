"""The routing bench on real llama-servers (llama.cpp, CPU, tiny random-weight models).

    .venv/bin/python -m bench.routing.real            # base + skew x 5 policies (--cache-ram 0), then
                                                      # base x 5 with the default --cache-ram; updates docs/routing.md
    .venv/bin/python -m bench.routing.real --smoke    # seconds-long check that it works (tests/bench)
    .venv/bin/python -m bench.routing.real --variants skew --policies least-loaded,cache-aware --ram-policies none

For each (variant, cache-ram, policy) it starts fresh llama-servers (``--parallel 2 -c 8192 -t 1
--metrics``, ``--cache-ram 0`` unless it is the cache-ram run) and, in front of them,
llama-balancer with that policy or sglang-router (``cache_aware``), runs every conversation
to its end (``real_client.py``) and summarises (``real_report.py``). The hit ratio is
llama-server's own ``timings.cache_n / (cache_n + prompt_n)``, summed over turns. Needs the
binary of ``python -m tools.llama_server build``; exits 2 without it.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from ..sglang_launch import sglang_router_available
from . import real_report as report
from .real_client import run_conversations
from .real_diag import CpuWatch, SlotSampler, SnapshotSampler, attribute, idle_while_queued
from .real_servers import Front, LlamaServers, llama_server_binary, model_file
from .real_workload import FULL, SMOKE, Scripts, ServerSpec, Workload, render_chatml, vocabulary
from .report import read_access_log
from .run import _machine, _overrides
from .stack import ROOT

POLICIES = ("round-robin", "least-loaded", "classic", "cache-aware", "sglang-router")
RAM_POLICIES = ("round-robin", "cache-aware", "sglang-router")  # the default --cache-ram run (time)
RESULTS = Path(__file__).resolve().parent / "results"
DOC = ROOT / "docs" / "routing.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.routing.real", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="base,skew", help="comma-separated: base,skew (each with --cache-ram 0)")
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated: " + ",".join(POLICIES))
    p.add_argument("--ram-policies", default=",".join(RAM_POLICIES), metavar="LIST",
                   help="policies also run on base with llama-server's default --cache-ram ('none': skip)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kind", default=None, help="servers' kind in the balancer config (default: none, "
                   "the product's default detects llama-server)")
    p.add_argument("--routing", action="append", default=[], metavar="KEY=VALUE",
                   help="override a balancer.routing knob (repeatable)")
    p.add_argument("--diagnose", action="store_true", help="poll each llama-server's /slots every 0.1 s: "
                   "which slot served each turn, idle slots while the balancer queued (adds load)")
    p.add_argument("--balancer-commit", default=None, metavar="REV",
                   help="run the balancer as committed at REV (git archive of src/ into a temporary folder), "
                        "not the working tree; e.g. HEAD while others edit the tree")
    p.add_argument("--keep-logs", action="store_true", help="keep every process's log and the access logs "
                   "under OUT/logs/STAMP (default: a temporary folder, removed)")
    p.add_argument("--smoke", action="store_true", help="tiny conversations of 2 turns; checks the bench works")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/routing.md")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="run nothing: rewrite the section in docs/routing.md from a saved results file")
    ns = p.parse_args(argv)
    ns.variants = _choices(ns.variants, ("base", "skew"), p)
    ns.policies = _choices(ns.policies, POLICIES, p)
    ns.ram_policies = [] if ns.ram_policies == "none" else _choices(ns.ram_policies, POLICIES, p)
    ns.routing_overrides = _overrides(ns.routing, p)
    return ns


def _choices(raw: str, allowed: tuple[str, ...], p: argparse.ArgumentParser) -> list[str]:
    items = [x.strip() for x in raw.split(",") if x.strip()]
    if not items or any(x not in allowed for x in items):
        p.error(f"expected some of {','.join(allowed)}, got {raw!r}")
    return items


class Tokenizer:
    """A spare tiny llama-server (idle during runs): the real tokenizer, for scripts and ceilings."""

    def __init__(self, workdir: Path) -> None:
        self.servers = LlamaServers((ServerSpec("tokenizer", slots=1, ctx=4096),), workdir, cache_ram=False)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Tokenizer":
        await self.servers.start()
        self.session = aiohttp.ClientSession(self.servers.url("tokenizer"), timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        await self.servers.stop()

    async def ids(self, text: str, add_special: bool = True) -> list[int]:
        assert self.session is not None
        async with self.session.post("/tokenize", json={"content": text, "add_special": add_special}) as resp:
            resp.raise_for_status()
            return list((await resp.json())["tokens"])

    async def tokens_per_word(self, seed: int) -> float:
        words = vocabulary(seed)[:1000]
        return len(await self.ids(" " + " ".join(words), add_special=False)) / len(words)


async def run_one(wl: Workload, policy: str, cache_ram: bool, scripts: Scripts, tok: Tokenizer,
                  ns: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    servers = LlamaServers(wl.servers, workdir, cache_ram=cache_ram)
    front = Front(policy, servers, workdir, ns.kind, ns.routing_overrides, ns.balancer_src)
    cpu, sampler, snapper = CpuWatch(), None, None
    try:
        await servers.start()
        await front.start()
        if ns.diagnose:
            sampler = SlotSampler({n: servers.url(n) for n in servers.ports})
            sampler.start(time.monotonic())
            if policy != "sglang-router":
                snapper = SnapshotSampler(front.url)
                snapper.start(sampler.started)
        cpu.start()
        result = await run_conversations(front.url, scripts)
        load = cpu.stop()
        if sampler is not None:
            await sampler.stop()
        if snapper is not None:
            await snapper.stop()
        per_server = await front.per_server_requests()
        metrics = await servers.metrics()
    finally:
        await front.stop()
        await servers.stop()
    turns = [t.to_json() for t in result.turns]
    logged = read_access_log(front.access_log)
    for turn in turns:
        entry = logged.get(turn["request_id"] or "", {})
        turn.update(server=entry.get("server"), reason=entry.get("reason"), queue_wait_ms=entry.get("queue_wait_ms"))
    if per_server is None:
        per_server = report.servers_from_log(turns, servers.ports)
    tokens: dict[tuple[str, int], tuple[list[int], int]] = {}
    preambles = [await tok.ids(f"<|im_start|>system\n{p}") for p in scripts.preambles]
    for t in turns:
        messages = result.messages[t["conversation"]]
        history = render_chatml(messages[:1 + 2 * t["turn"]])  # system .. the previous reply
        prompt = render_chatml(messages[:2 + 2 * t["turn"]]) + "<|im_start|>assistant\n"
        ids = await tok.ids(prompt)
        tokens[(t["conversation"], t["turn"])] = (ids, len(await tok.ids(history)) if t["turn"] else 0)
    report.ceilings(turns, tokens, preambles)
    summary = report.summarize(turns, result.errors, result.wall_s, per_server, metrics)
    summary["foreign_cpu"] = load["foreign_share"]
    summary["cpu"] = load
    if sampler is not None:
        attribute(turns, sampler.samples)
        summary["diagnosis"] = {"attributed": sum(1 for t in turns if t["slot"] is not None),
                                **idle_while_queued(turns, sampler.samples, list(servers.ports), wl.servers[0].slots)}
        if snapper is not None:
            summary["diagnosis"]["balancer_view"] = snapper.summary()
    return {"summary": summary, "turns": turns, "errors": result.errors, "front": front.config,
            "balancer_source": front.balancer_source,
            "messages": result.messages, "slot_samples": sampler.samples if sampler else None,
            "snapshot_samples": snapper.samples if snapper else None}


async def main_async(ns: argparse.Namespace, argv: list[str]) -> int:
    binary = llama_server_binary()
    if binary is None:
        print("no llama-server binary here: build it with `python -m tools.llama_server build`", file=sys.stderr)
        return 2
    policies = list(ns.policies)
    if "sglang-router" in policies + ns.ram_policies and not sglang_router_available():
        print("sglang-router is not installed (.venv/bin/pip install sglang-router); skipping it", file=sys.stderr)
        policies = [p for p in policies if p != "sglang-router"]
        ns.ram_policies = [p for p in ns.ram_policies if p != "sglang-router"]
    table = SMOKE if ns.smoke else FULL
    plan = [(v, False, p) for v in ns.variants for p in policies]
    plan += [("base", True, p) for p in ns.ram_policies]
    for spec in {s.model_key: s for v, _, _ in plan for s in table[v].servers}.values():
        model_file(spec)
    started, date = time.monotonic(), dt.datetime.now(dt.timezone.utc)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="routing-real-") as tmp:
        ns.balancer_src, ns.balancer_rev = None, None
        if ns.balancer_commit:
            ns.balancer_rev, ns.balancer_src = export_src(ns.balancer_commit, Path(tmp) / "src-export")
        if ns.keep_logs:
            tmp = str(ns.out / "logs" / date.strftime("%Y%m%dT%H%M%SZ"))
            Path(tmp).mkdir(parents=True, exist_ok=True)
        async with Tokenizer(Path(tmp)) as tok:
            tpw = await tok.tokens_per_word(ns.seed)
            scripts = {v: Scripts(table[v], ns.seed, tpw) for v in {v for v, _, _ in plan}}
            preamble_tokens = {v: [len(await tok.ids(p, add_special=False)) for p in s.preambles]
                               for v, s in scripts.items()}
            for variant, cache_ram, policy in plan:
                key = report.run_key(variant, cache_ram)
                t0 = time.monotonic()
                one = await run_one(table[variant], policy, cache_ram, scripts[variant], tok, ns,
                                    Path(tmp) / f"{key}-{policy}")
                s = one["summary"]
                results.setdefault(key, {})[policy] = s
                raw[f"{key}/{policy}"] = one
                print(f"{key:15s} {policy:13s} turns={s['turns']:3d} hit={_p(s['hit_ratio'])} "
                      f"ceiling={_p(s['ceiling_ratio'])} strict={_p(s['strict_ceiling_ratio'])} "
                      f"ttft p50={s['ttft_p50_ms'] or 0:.0f} p90={s['ttft_p90_ms'] or 0:.0f} ms wall={s['wall_s']:.1f} s "
                      f"errors={s['errors']} mismatch={s['token_mismatches']} other-load={100 * s['foreign_cpu']:.0f}% "
                      f"servers={s['per_server']} diag={s.get('diagnosis')} "
                      f"reasons={s['reasons']} ({time.monotonic() - t0:.1f} s)", flush=True)
    version = _version(binary)
    meta = {"date": date.strftime("%Y-%m-%d %H:%M UTC"), "machine": _machine(), "took_s": time.monotonic() - started,
            "command": " ".join([".venv/bin/python -m bench.routing.real", *map(shlex.quote, argv)]),
            "seed": ns.seed, "kind": ns.kind, "smoke": ns.smoke, "routing": ns.routing_overrides,
            "llama_server": version, "tokens_per_word": tpw, "preamble_tokens": preamble_tokens,
            "balancer": f"commit {ns.balancer_rev[:10]}" if ns.balancer_rev else f"working tree at {_head()}"}
    workloads = {v: table[v].to_json() for v in {v for v, _, _ in plan}}
    verdict_list = report.verdicts(results)
    markdown = report.render(meta, workloads, results, verdict_list)
    print("\n" + markdown)
    ns.out.mkdir(parents=True, exist_ok=True)
    name = "real-smoke" if ns.smoke else "real"
    payload = {"meta": meta, "results": results, "verdicts": verdict_list, "workloads": workloads, "raw": raw,
               "markdown": markdown}
    (ns.out / f"{name}-{date.strftime('%Y%m%dT%H%M%SZ')}.json").write_text(json.dumps(payload, indent=1))
    (ns.out / f"latest-{name}.json").write_text(json.dumps(payload, indent=1))
    if not ns.smoke and not ns.no_doc:
        report.update_doc(DOC, markdown)
        print(f"\nupdated {DOC.relative_to(ROOT)}")
    return 1 if any(s["errors"] for p in results.values() for s in p.values()) else 0


def export_src(rev: str, into: Path) -> tuple[str, Path]:
    """``src/`` as committed at ``rev``, written under ``into``: (full commit id, its src folder)."""
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--verify", rev + "^{commit}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit, into / "src"


def _head() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + (" with uncommitted changes in src/" if dirty else "")


def _version(binary: Path) -> str:
    import subprocess

    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=20)
        line = next((l for l in (out.stdout + out.stderr).splitlines() if l.startswith("version")), "")
        return f"llama-server {line.removeprefix('version:').strip()}" if line else "llama-server"
    except (OSError, subprocess.SubprocessError):
        return "llama-server"


def _p(v: float | None) -> str:
    return "   —  " if v is None else f"{100 * v:5.1f}%"


def render_saved(path: Path) -> int:
    saved = json.loads(path.read_text())
    markdown = report.render(saved["meta"], saved["workloads"], saved["results"], report.verdicts(saved["results"]))
    print(markdown)
    report.update_doc(DOC, markdown)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ns = parse_args(argv)
    if ns.render is not None:
        return render_saved(ns.render)
    # SIGTERM unwinds like Ctrl-C, so that every run's finally stops its processes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return asyncio.run(main_async(ns, argv))


if __name__ == "__main__":
    sys.exit(main())
