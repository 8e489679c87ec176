"""The command line as an operator meets it, run as a subprocess: --version, help for every
flag, --log-level checked, the operational log's start-up summary and drain lines in both
formats, and check-config (every problem at once, shadowed patterns, --probe)."""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys

import aiohttp
import pytest

from llama_balancer.cli import build_parser
from llama_balancer.sim.config import build_parser as sim_parser
from tests.conftest import server_entry

MODEL = "m"


async def run_cli(*args: str, timeout: float = 20) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "llama_balancer", *args,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, out.decode(), err.decode()


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


async def test_version_and_help_show_every_flag_with_help_default_and_choices_and_no_markup():
    code, out, _ = await run_cli("--version")
    assert code == 0 and re.fullmatch(r"llama-balancer \S+\n", out)
    for args in ((), ("serve",), ("demo",), ("check-config",), ("sim-backend",)):
        code, out, err = await run_cli(*args, "--help")
        assert code == 0 and not err and "usage:" in out
        assert "`" not in out and "``" not in out, out  # no markup shown literally
    parsers = {name: p for name, p in subparsers(build_parser()).items() if name != "sim-backend"}
    parsers["sim-backend"] = sim_parser()
    for name, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            text = parser.format_help()
            if action.option_strings and action.default not in (None, False):
                shown = " ".join(text.split())
                assert f"(default: {action.default})" in shown or "default" in action.help, (name, action.dest)
    serve = subparsers(build_parser())["serve"].format_help()
    assert "{debug,info,warning,error}" in serve and "{text,json}" in serve


async def test_a_bad_log_level_is_one_line_not_a_traceback():
    code, _, err = await run_cli("serve", "--log-level", "loud")
    assert code == 2 and "invalid choice: 'loud'" in err and "Traceback" not in err
    code, _, err = await run_cli("serve", "--log-format", "xml")
    assert code == 2 and "invalid choice" in err and "Traceback" not in err


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_serve_logs_its_summary_then_drain_start_and_end_one_line_each(sims, tmp_path, fmt):
    sim = await sims(name="PC1", models=[MODEL])
    path = tmp_path / "server-list.json"
    path.write_text(json.dumps({"servers": {"PC1": server_entry(sim, kind="llama.cpp")}, "models": {MODEL: ["PC1"]},
                                "balancer": {"access_log": "off", "drain_grace_s": 2}}))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llama_balancer", "serve", "--config", str(path), "--host", "127.0.0.1",
        "--port", "0", "--log-format", fmt, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []

    async def read_until(word: str) -> str:
        while True:
            line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode().rstrip("\n")
            assert line, "the balancer exited: " + "\n".join(lines)
            lines.append(line)
            if word in line:
                return line
    try:
        start = read_event(await read_until("start"), fmt)
        assert start["event"] == "start" and start["config"] == str(path) and start["policy"] == "cache-aware"
        assert start["servers"] in (["PC1=llama.cpp"], "PC1=llama.cpp")
        port = int(start["listen"].rsplit(":", 1)[1])
        async with aiohttp.ClientSession() as http:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as response:
                assert response.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
    read_event(await read_until("drain_start"), fmt)
    end = read_event(await read_until("drain_end"), fmt)
    assert int(end["cut"]) == 0
    assert await asyncio.wait_for(process.wait(), 20) == 0
    lines += (await process.stderr.read()).decode().splitlines()
    for line in lines:
        read_event(line, fmt)  # every line, library ones too, is one record in the chosen format


def read_event(line: str, fmt: str) -> dict:
    if fmt == "json":
        return json.loads(line)
    assert re.match(r'^ts=\S+ level=(debug|info|warning|error) (event|logger)=\S+ .*msg=', line), line
    return {key: value.strip('"') for key, value in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)}


BROKEN = {
    "servers": {"PC1": {"addr": "http://127.0.0.1", "health-port": 1, "model-port": "8081a"}},
    "models": {"gpt-oss.*": ["PC1"], "gpt-oss:20b.*": ["PC9"]},
    "fallback_server": "PC7",
}


async def test_check_config_reports_type_errors_and_bad_references_in_one_run(tmp_path):
    path = tmp_path / "server-list.json"
    path.write_text(json.dumps(BROKEN))
    code, _, err = await run_cli("check-config", str(path))
    assert code == 1
    assert "servers.PC1.model-port: expected an integer" in err
    assert "models[\"gpt-oss:20b.*\"][0]: unknown server 'PC9'" in err
    assert "fallback_server: unknown server 'PC7'" in err and "3 problem(s)" in err


async def test_check_config_warns_about_a_pattern_an_earlier_one_shadows(tmp_path):
    data = {"servers": {"PC1": {"addr": "http://127.0.0.1", "health-port": 1, "model-port": 2}},
            "models": {"gpt-oss.*": ["PC1"], "gpt-oss:20b.*": ["PC1"], "llama.*": ["PC1"]}}
    path = tmp_path / "server-list.json"
    path.write_text(json.dumps(data))
    code, out, _ = await run_cli("check-config", str(path))
    assert code == 0
    [warning] = [line for line in out.splitlines() if "can never match" in line]
    assert warning.startswith('warning: models["gpt-oss:20b.*"] can never match') and "'gpt-oss.*'" in warning


async def test_check_config_probe_prints_what_each_server_is_or_why_it_failed(sims, tmp_path):
    sim = await sims(name="PC1", models=[MODEL], slots=3)
    dead = await sims(name="PC2", models=[MODEL])
    await dead.set_fault("refuse")
    path = tmp_path / "server-list.json"
    path.write_text(json.dumps({"servers": {"PC1": server_entry(sim), "PC2": server_entry(dead)},
                                "models": {MODEL: ["PC1", "PC2"]}}))
    code, out, _ = await run_cli("check-config", "--probe", str(path))
    assert code == 2, out
    [pc1] = [line for line in out.splitlines() if line.strip().startswith("PC1 http")]
    assert "llama.cpp, 3 slots, models [m]" in pc1
    [pc2] = [line for line in out.splitlines() if line.strip().startswith("PC2 http")]
    assert "FAILED" in pc2 and "/health unreachable" in pc2 and "Connect" in pc2
    await dead.set_fault(None)
    code, out, _ = await run_cli("check-config", "--probe", str(path))
    assert code == 0 and "FAILED" not in out
