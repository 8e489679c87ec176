"""Imports point down the layers of DESIGN.md: cli > runtime > http > routing > io > h1 > state > core.

``routing`` (route resolution, decision, queueing, retries, recording) knows no HTTP stack:
it imports neither ``http`` nor aiohttp; the data paths in ``http`` call it.

``sim`` stands apart: the product never imports it (only the cli, to run it), and it
imports nothing of the product.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "llama_balancer"
# h1: the HTTP/1.1 codec on llhttp and the exchange state machine (pure: no asyncio, no sockets).
RANK = {"core": 0, "state": 1, "h1": 2, "io": 3, "routing": 4, "http": 5, "runtime": 6, "cli": 7}
CORE_FORBIDDEN = {"asyncio", "socket", "time", "os", "aiohttp", "threading", "subprocess", "random"}
ROUTING_FORBIDDEN = {"aiohttp", "socket", "time"}  # no HTTP stack, no sockets, only the injected clock


def _layer_of(module_path: Path, root: Path = PACKAGE) -> str:
    return module_path.relative_to(root).parts[0].removesuffix(".py")


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[str, int]]:
    """(absolute dotted name, line) of every import in a module of the package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package_parts = ["llama_balancer", *path.relative_to(root).parent.parts]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, node.lineno))
    return found


def layer_violations(root: Path) -> list[str]:
    wrong = []
    for path in root.rglob("*.py"):
        layer = _layer_of(path, root)
        if layer not in RANK and layer != "sim":
            continue
        for name, line in _imports(path, root):
            parts = name.split(".")
            if parts[0] != "llama_balancer" or len(parts) < 2:
                continue
            target = parts[1]
            if layer == "sim":
                if target != "sim":
                    wrong.append(f"{path.name}:{line} sim imports {name}")
            elif target == "sim":
                if layer != "cli":
                    wrong.append(f"{path.name}:{line} {layer} imports the simulator")
            elif target in RANK and RANK[target] > RANK[layer]:
                wrong.append(f"{path.relative_to(root)}:{line} {layer} imports {name}")
        if layer == "core":
            wrong += [f"{path.name}:{line} core imports {name}" for name, line in _imports(path, root)
                      if name.split(".")[0] in CORE_FORBIDDEN]
        elif layer == "routing":
            wrong += [f"{path.name}:{line} routing imports {name}" for name, line in _imports(path, root)
                      if name.split(".")[0] in ROUTING_FORBIDDEN]
    return wrong


def test_every_module_belongs_to_a_known_layer():
    unknown = {_layer_of(p) for p in PACKAGE.rglob("*.py")} - set(RANK) - {"sim", "__init__", "__main__"}
    assert not unknown


def test_imports_point_down_the_layers_and_core_reads_no_clock_env_or_sockets():
    assert layer_violations(PACKAGE) == []


def test_the_checker_reports_upward_relative_and_forbidden_imports(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "sim").mkdir()
    (tmp_path / "routing").mkdir()
    (tmp_path / "core" / "bad.py").write_text("import time\nfrom ..state import registry\n")
    (tmp_path / "routing" / "web.py").write_text("import aiohttp\nfrom ..http import routed\nfrom ..io import oplog\n")
    (tmp_path / "state" / "ok.py").write_text("from ..core import health\n")
    (tmp_path / "sim" / "leak.py").write_text("from llama_balancer.core import config\n")
    found = layer_violations(tmp_path)
    assert len(found) == 5
    assert any("core imports time" in line for line in found)
    assert any("core imports llama_balancer.state" in line for line in found)
    assert any("sim imports llama_balancer.core" in line for line in found)
    assert any("routing imports aiohttp" in line for line in found)
    assert any("routing imports llama_balancer.http" in line for line in found)
