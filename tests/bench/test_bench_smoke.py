"""The benchmark harness works: a seconds-long ``--smoke`` run of every scenario against all
four targets (direct, nginx, sglang-router, llama-balancer) and the reference points
(bench/reference/). It checks that results were produced, with no error and a ``[DONE]`` on
every stream -- never how fast anything was.

nginx and wrk are Debian packages (skipped without them, failed in CI); sglang-router is a
wheel of the ``test`` extra, so a venv without it fails here rather than skipping it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("S1", "S2", "S3", "S4")
TARGETS = ("direct", "nginx", "sglang-router", "balancer")
REFERENCES = {"aiohttp-only": ("S1",), "raw-proxy": SCENARIOS}


def _missing_tools() -> list[str]:
    missing = []
    if not (shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK)):
        missing.append("nginx")
    if not shutil.which("wrk"):
        missing.append("wrk")
    return missing


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if importlib.util.find_spec("sglang_router") is None:
        pytest.fail(f"bench smoke needs sglang-router in {sys.executable}: it is in the test extra "
                    "(pip install -e '.[test]', or pip install sglang-router)")
    missing = _missing_tools()
    if missing:
        message = f"bench smoke needs {' and '.join(missing)} (apt-get install {' '.join(missing)})"
        if os.environ.get("LLAMA_BALANCER_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "harness.py"), "--smoke", "--no-doc", "--out", str(out),
         "--targets", ",".join(TARGETS + tuple(REFERENCES))],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"bench --smoke failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    result = json.loads((out / "latest-smoke.json").read_text())
    result["table"] = proc.stdout  # the markdown the harness prints
    return result


def test_smoke_measures_every_scenario_against_every_target(smoke: dict) -> None:
    seen = {(run["scenario"], run["target"]) for run in smoke["runs"]}
    references = {(s, t) for t, scenarios in REFERENCES.items() for s in scenarios}
    assert seen == {(s, t) for s in SCENARIOS for t in TARGETS} | references


def test_smoke_runs_have_no_errors(smoke: dict) -> None:
    failed = [(r["scenario"], r["target"], r.get("error_kinds")) for r in smoke["runs"] if r["errors"]]
    assert failed == []


def test_every_stream_ended_with_done(smoke: dict) -> None:
    # streamgen counts a stream without [DONE] (or with too few events) as an error, so a
    # stream is in "streams" only when it was whole.
    for run in smoke["runs"]:
        if run["scenario"] == "S1":
            assert run["requests"] > 0
            continue
        assert run["streams"] > 0, run
        if run.get("expected_streams") is not None:
            assert run["streams"] == run["expected_streams"], run


def test_smoke_reports_proxy_cpu_and_memory(smoke: dict) -> None:
    for run in smoke["runs"]:
        if run["target"] != "direct":
            assert run["proxy_peak_rss_mib"] > 0 and run["proxy_cpu_s"] >= 0, run
            assert run["proxy_cpu_us_per_req"] >= 0, run
    assert {c["target"] for c in smoke["checks"]} >= {"S1 req/s vs sglang-router", "S3 errors", "S4 errors"}


def test_smoke_tables_show_cpu_per_request_and_the_sglang_router_ratios(smoke: dict) -> None:
    table = smoke["table"]
    assert table.count("CPU µs/req |") == len(SCENARIOS)
    assert table.count("| sglang-router / nginx |") == len(SCENARIOS)
    assert table.count("| balancer / sglang-router |") == len(SCENARIOS)
