"""bench/shared_state.py works: a seconds-long ``--smoke`` run of one balancer with and without
shared state in Redis (with and without its reserve of leases), with no error -- never how fast anything was."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_shared_state_bench_runs_every_variant_without_errors(tmp_path: Path):
    missing = [tool for tool in ("wrk", "redis-server") if not shutil.which(tool)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the shared-state bench smoke needs {' and '.join(missing)}")
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install {' '.join(missing)})")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "shared_state.py"), "--smoke", "--scenarios", "S1c1,S2",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "added by +redis |" in done.stdout and "added by +redis, no reserve |" in done.stdout
    result = json.loads(next(tmp_path.glob("shared-state-*.json")).read_text())
    runs = {(r["scenario"], r["target"]) for r in result["runs"]}
    assert runs == {(s, v) for s in ("S1c1", "S2") for v in ("balancer", "balancer+redis",
                                                                         "balancer+redis, no reserve")}
    assert all(r["errors"] == 0 for r in result["runs"])
