"""The routing bench on real llama-servers works: a ``--smoke`` run (6 tiny conversations of 2
turns, both variants, every policy, sglang-router when installed) against real llama-server
processes. It runs only where ``python -m tools.llama_server build`` has cached a binary, and
checks that every turn completed with llama-server's own timings, never how good the numbers
are. The pure parts (ceilings, verdicts) are tested without servers.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.routing import real_report  # noqa: E402
from bench.routing.real_servers import llama_server_binary  # noqa: E402
from bench.sglang_launch import sglang_router_available  # noqa: E402
from bench.routing.real_workload import FULL, Scripts  # noqa: E402

POLICIES = ["round-robin", "least-loaded", "classic", "cache-aware"] + (
    ["sglang-router"] if sglang_router_available() else [])
needs_binary = pytest.mark.skipif(llama_server_binary() is None,
                                  reason="no llama-server binary (python -m tools.llama_server build)")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("routing-real")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.routing.real", "--smoke", "--no-doc", "--out", str(out),
         "--policies", ",".join(POLICIES), "--ram-policies", "cache-aware"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"real routing bench --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads((out / "latest-real-smoke.json").read_text())


@needs_binary
def test_smoke_runs_every_variant_under_every_policy(smoke: dict) -> None:
    seen = {(run, policy) for run, policies in smoke["results"].items() for policy in policies}
    assert seen == {(v, p) for v in ("base", "skew") for p in POLICIES} | {("base+cache-ram", "cache-aware")}


@needs_binary
def test_smoke_completes_every_turn_with_the_servers_own_timings(smoke: dict) -> None:
    for run, policies in smoke["results"].items():
        spec = smoke["workloads"][run.partition("+")[0]]
        for policy, s in policies.items():
            assert s["errors"] == 0, (run, policy, s["error_samples"])
            assert s["turns"] == spec["conversations"] * spec["turns"][1], (run, policy)
            assert s["token_mismatches"] == 0, (run, policy)
            assert sum(s["per_server"].values()) == s["turns"], (run, policy, s["per_server"])
            for key in ("hit_ratio", "ceiling_ratio", "strict_ceiling_ratio", "ttft_p50_ms", "ttft_p90_ms", "wall_s"):
                assert s[key] is not None and s[key] >= 0, (run, policy, key)
            assert 0 < s["ceiling_ratio"] < 1


def test_ceiling_is_the_history_and_a_first_turn_may_find_an_earlier_preamble() -> None:
    turns = [{"conversation": "a", "turn": 0, "start_s": 0.0, "group": 0},
             {"conversation": "b", "turn": 0, "start_s": 1.0, "group": 0},
             {"conversation": "a", "turn": 1, "start_s": 2.0, "group": 0}]
    tokens = {("a", 0): ([1, 5, 6, 7, 8], 0), ("b", 0): ([1, 5, 6, 9], 0), ("a", 1): ([1, 5, 6, 7, 8, 3, 4, 2], 6)}
    real_report.ceilings(turns, tokens, [[1, 5, 6, 7]])
    assert [t["ceiling"] for t in turns] == [0, 0, 6]
    assert [t["strict_ceiling"] for t in turns] == [0, 3, 6]
    assert [t["tokenized"] for t in turns] == [5, 4, 8]
    assert [t["preamble"] for t in turns] == [4, 3, 4]


def test_verdicts_compare_cache_aware_with_the_best_other_policy_or_peer() -> None:
    def s(hit: float, p90: float = 100.0, ceiling: float = 0.9) -> dict:
        return {"hit_ratio": hit, "ttft_p90_ms": p90, "ceiling_ratio": ceiling, "errors": 0}

    results = {"base": {"round-robin": s(0.2), "sglang-router": s(0.5), "cache-aware": s(0.66)},
               "skew": {"least-loaded": s(0.3, 200.0), "cache-aware": s(0.35, 150.0)},
               "base+cache-ram": {"cache-aware": s(0.86, ceiling=0.9)}}
    got = {(v["run"], v["target"].split(" (")[0]): v["hold"] for v in real_report.verdicts(results)}
    assert got == {("base", "hit ratio >= 1.3x the best other"): True,
                   ("skew", "hit ratio >= 1.2x the best other"): False,
                   ("skew", "TTFT p90 no worse than least-loaded's"): True,
                   ("base+cache-ram", "hit ratio >= 0.95 of the ceiling"): True}


def test_conversations_share_their_groups_preamble_and_are_the_same_for_every_policy() -> None:
    a, b = Scripts(FULL["base"], 1, 2.0), Scripts(FULL["base"], 1, 2.0)
    convs = a.conversations()
    assert convs == b.conversations() and len(convs) >= 12
    assert len({c.group for c in convs}) == len(FULL["base"].groups)
    for c in convs:
        assert c.system.startswith(a.preambles[c.group]) and c.turns >= 2
    assert len({c.system for c in convs}) == len(convs)
