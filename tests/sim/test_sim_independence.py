"""The sim stands apart: it imports only the standard library, aiohttp and orjson."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import llama_balancer.sim

SIM_DIR = Path(llama_balancer.sim.__file__).parent
ALLOWED = set(sys.stdlib_module_names) | {"aiohttp", "orjson", "uvloop"}  # uvloop: optional


def outside_imports(directory: Path) -> list[str]:
    """Every import in the directory's modules that is neither relative nor allowed."""
    wrong = []
    for path in sorted(directory.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            wrong += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in ALLOWED]
    return wrong


def test_sim_imports_only_stdlib_aiohttp_and_orjson():
    assert outside_imports(SIM_DIR) == []


def test_the_import_check_reports_a_product_import(tmp_path):
    (tmp_path / "leak.py").write_text("import json\nfrom llama_balancer.core import config\n")
    assert outside_imports(tmp_path) == ["leak.py: llama_balancer.core"]


def test_uvloop_is_only_imported_where_it_is_optional():
    users = [p.name for p in SIM_DIR.glob("*.py") if "import uvloop" in p.read_text()]
    assert users == ["cli.py"]
    assert "except ImportError" in (SIM_DIR / "cli.py").read_text()
