"""bench/logic.py runs and reports every part of the routing logic's per-request CPU; what
the figures are is never checked."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_logic_bench_reports_each_part_per_request():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "logic.py"), "--requests", "200"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    line = run.stdout.strip()
    assert re.fullmatch(r"routing logic: [\d.]+ us/request \(parse [\d.]+, resolve [\d.]+, obtain [\d.]+, "
                        r"slot [\d.]+, finish [\d.]+\)", line), line
