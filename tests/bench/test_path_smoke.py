"""bench/path.py drives the whole native data path without sockets; only that it serves its
requests (plain and streamed, every answer a 200 it can count) and reports a figure is
checked, never the figure."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("extra", [[], ["--stream", "4"], ["--without", "routing,record"]])
def test_the_path_bench_serves_its_requests_and_reports_cpu_per_request(extra: list[str]):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "path.py"), "--requests", "200", "--warmup", "20",
                          *extra], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    found = re.search(r"([0-9.]+) us CPU/request", run.stdout)
    assert found and float(found.group(1)) > 0, run.stdout
