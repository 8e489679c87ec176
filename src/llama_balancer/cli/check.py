"""``check-config``: validate a server-list.json and explain what the balancer will do;
``--probe`` polls each server once with the balancer's own polling code."""
from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import orjson

from ..core.config import Config, config_from_data, format_path, unknown_top_level_keys
from ..core.errors import ConfigError
from ..core.shadow import shadowed_patterns
from ..io.pollers import Pollers
from ..io.upstream import UpstreamClient
from ..state.clock import SystemClock
from ..state.registry import Registry

PROBE_FAILED = 2  # exit status: the file is good, but a server could not be read


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
    for line in shadow_warnings(config):
        print(f"warning: {line}")
    if not probe:
        return 0
    lines, failed = asyncio.run(probe_servers(config))
    print("probe (one poll of each server, as the balancer polls it):")
    for line in lines:
        print(line)
    return PROBE_FAILED if failed else 0


def explain(config: Config) -> list[str]:
    lines = [f"servers ({len(config.servers)}):"]
    for name, server in config.servers.items():
        cap = f", at most {server.request_max} in flight" if server.request_max else ""
        kind = "" if server.kind == "auto" else f", kind {server.kind}"
        lines.append(f"  {name}: models at {server.model_base}, health at {server.health_base}/llmhealth{kind}{cap}")
    lines.append("routing (first fullmatch wins):")
    for pattern, names in config.models.items():
        lines.append(f"  {pattern!r} -> {' then '.join(names)}")
    lines.append(f"  anything else -> {config.fallback} (fallback)")
    for rule in config.rewrites:
        lines.append(f"rewrite: {rule.match!r} -> model {rule.model!r}, merge {orjson.dumps(rule.merge).decode()}")
    options = config.balancer
    lines.append(f"unknown model names: {options.unknown_model}"
                 + (" (404 model_not_found)" if options.unknown_model == "reject" else " (routed as any other)"))
    if options.cors_origins:
        lines.append(f"CORS: preflights answered for {', '.join(options.cors_origins)}")
    return lines


def shadow_warnings(config: Config) -> list[str]:
    """One line per ``models`` pattern that earlier ones leave nothing to match."""
    out = []
    for found in shadowed_patterns(list(config.models)):
        by = " and ".join(repr(p) for p in found.by)
        which = "the earlier pattern" if len(found.by) == 1 else "the earlier patterns"
        verb = "takes" if len(found.by) == 1 else "take"
        out.append(f"{format_path(('models', found.pattern))} can never match: {which} {by} "
                   f"{verb} every name it matches (the first fullmatch wins); move it up or remove it")
    return out


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def probe_servers(config: Config) -> tuple[list[str], bool]:
    """Poll every server once (health and kind, then models) with the balancer's pollers;
    one line per server with what was found or why it failed, and whether any failed."""
    logger = logging.getLogger("llama_balancer")
    collect, propagate = _Collect(), logger.propagate
    logger.addHandler(collect)
    logger.propagate = False  # the warnings are printed below, under the probe's lines
    client = UpstreamClient(config.balancer)
    await client.start()
    registry = Registry(config, SystemClock())
    pollers = Pollers(registry, client)
    pollers.apply_timeouts(config)
    try:
        await asyncio.gather(*(_probe_one(pollers, name) for name in config.servers))
    finally:
        await client.close()
        logger.removeHandler(collect)
        logger.propagate = propagate
    lines, failed = [], False
    for name in config.servers:
        state = registry.state(name)
        server = state.server
        if state.status == "invalid":
            failed = True
            detail = (state.last or {}).get("detail") or "no answer"
            lines.append(f"  {name} {server.model_base}: FAILED: {detail}")
        else:
            lines.append("  " + state.profile().describe(name, server.model_base, server.health_base))
    lines += [f"  warning: {message}" for message in collect.messages]
    return lines, failed


async def _probe_one(pollers: Pollers, name: str) -> None:
    await pollers.poll_health(name)
    await pollers.poll_models(name)
