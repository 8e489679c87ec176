"""``check-config``: validate a server-list.json and explain what the balancer will do."""
from __future__ import annotations

import sys
from pathlib import Path

import orjson

from ..core.config import Config, config_from_data, unknown_top_level_keys
from ..core.errors import ConfigError


def check_config(path: str, probe: bool = False) -> int:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        print(f"{path}: not valid JSON: {exc}", file=sys.stderr)
        return 1
    try:
        config = config_from_data(data)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{path}: OK")
    for line in explain(config):
        print(line)
    for key in unknown_top_level_keys(data):
        print(f"warning: top-level key {key!r} is not used by llama-balancer and is ignored")
    return 0


def explain(config: Config) -> list[str]:
    lines = [f"servers ({len(config.servers)}):"]
    for name, server in config.servers.items():
        cap = f", at most {server.request_max} in flight" if server.request_max else ""
        lines.append(f"  {name}: models at {server.model_base}, health at {server.health_base}/llmhealth{cap}")
    lines.append("routing (first fullmatch wins):")
    for pattern, names in config.models.items():
        lines.append(f"  {pattern!r} -> {' then '.join(names)}")
    lines.append(f"  anything else -> {config.fallback} (fallback)")
    for rule in config.rewrites:
        lines.append(f"rewrite: {rule.match!r} -> model {rule.model!r}, merge {orjson.dumps(rule.merge).decode()}")
    return lines
