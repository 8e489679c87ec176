"""bench/stamps.py runs the balancer with its stamps and reports every stage of a stream's
way to its first bytes; what the figures are is never checked, only that each stage was
seen and comes in the order of the path."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_stamps_bench_reports_each_stage_in_the_paths_order():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "stamps.py"), "--concurrency", "1", "--duration", "1"],
                         capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 1, run.stdout
    ttft, *stages = (float(cell) for cell in rows[0].strip("| ").split(" | ")[1:])
    assert ttft > 0 and len(stages) == 7
    assert stages == sorted(stages) and stages[0] > 0, rows[0]  # read -> ... -> first bytes written
