"""The routing-quality bench works: a seconds-long ``--smoke`` run (tiny conversations of 2
turns, fast sims, everything in one process) of every workload under all four policies. It
checks that numbers came out and that nothing failed -- never how good or fast they were.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from llama_balancer.core.identity import user_from_messages
from llama_balancer.sim.tokens import chat_tokens, tokenize

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.routing.workload import FULL, Scripts, make_text, message_tokens  # noqa: E402

WORKLOADS = ("W1", "W2", "W3", "W2m")
POLICIES = ("round-robin", "least-loaded", "classic", "cache-aware")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("routing-bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.routing.run", "--smoke", "--no-doc", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"routing bench --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads((out / "latest-smoke.json").read_text())


def test_smoke_measures_every_workload_under_every_policy(smoke: dict) -> None:
    seen = {(wl, policy) for wl, policies in smoke["results"].items() for policy in policies}
    assert seen == {(wl, p) for wl in WORKLOADS for p in POLICIES}


def test_smoke_runs_complete_every_turn_without_errors(smoke: dict) -> None:
    for wl, policies in smoke["results"].items():
        spec = smoke["workloads"][wl]
        for policy, summary in policies.items():
            assert summary["errors"] == 0, (wl, policy, summary["error_samples"])
            assert summary["turns"] == spec["conversations"] * spec["turns"][1], (wl, policy)
            assert summary["token_mismatches"] == 0, (wl, policy)


def test_smoke_reports_hit_ratio_ttft_throughput_and_bound(smoke: dict) -> None:
    for policies in smoke["results"].values():
        for summary in policies.values():
            for key in ("hit_ratio", "bound_ratio", "sim_bound_ratio", "ttft_p50_ms", "ttft_p99_ms", "turns_per_s"):
                assert summary[key] is not None and summary[key] >= 0, key
            assert 0 < summary["bound_ratio"] < 1
    assert "| upper bound" in smoke["markdown"]


def test_text_has_the_exact_token_count_and_renders_without_merging() -> None:
    rng, vocabulary = random.Random(7), ["alpha", "be", "gamma"]
    for n in (1, 2, 3, 4, 17, 1000):
        text = make_text(rng, vocabulary, n)
        assert len(tokenize(text)) == n
        message = {"role": "user", "content": text}
        assert message_tokens(message) == n + 6 == len(chat_tokens([message]))  # <|user|> ... \n


def test_each_conversation_names_its_own_user_after_a_shared_system_prompt() -> None:
    scripts = Scripts(FULL["W2"], seed=3)
    a, b = scripts.conversation(0, 0), scripts.conversation(1, 0)
    assert user_from_messages([{"role": "system", "content": a.system}]) == a.name != b.name
    assert a.system.startswith(scripts.variants[a.variant])
    assert Scripts(FULL["W2"], seed=3).conversation(0, 0) == a  # same seed, same conversation
    anonymous = Scripts(FULL["W2"], seed=3, identity="ip").conversation(0, 0)
    assert user_from_messages([{"role": "system", "content": anonymous.system}]) is None
