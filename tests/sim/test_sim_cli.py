"""The sim-backend command line: flag parsing, and main() serving until SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import aiohttp
import pytest

from llama_balancer.sim import SimConfig, parse_args


def test_parse_args_maps_every_flag_onto_the_config():
    options = parse_args([
        "--host", "0.0.0.0", "--port", "9001", "--name", "pc2",
        "--model", "llama", "--model", "qwen", "--instances", "2", "--slots", "4",
        "--prompt-tps", "500", "--gen-tps", "25", "--fast", "--max-tokens", "32",
        "--ctx", "2048", "--fault", "drop", "--stall-s", "1.5", "--drop-after", "5",
        "--llmhealth", "garbage", "--chunk-delay", "0.005",
    ])
    assert (options.host, options.port) == ("0.0.0.0", 9001)
    assert options.config == SimConfig(
        name="pc2", models=["llama", "qwen"], instances=2, slots=4, prompt_tps=500.0,
        gen_tps=25.0, fast=True, default_max_tokens=32, ctx_per_slot=2048, fault="drop",
        stall_s=1.5, drop_after_chunks=5, llmhealth="garbage", chunk_delay_s=0.005)


def test_parse_args_defaults_match_simconfig_defaults():
    options = parse_args([])
    assert (options.host, options.port) == ("127.0.0.1", 8081)
    assert options.config == SimConfig()


@pytest.mark.parametrize("argv", [["--fault", "explode"], ["--llmhealth", "sleepy"],
                                  ["--slots", "many"]])
def test_parse_args_rejects_bad_values(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_simconfig_rejects_unknown_fault_and_empty_models():
    with pytest.raises(ValueError):
        SimConfig(fault="explode")
    with pytest.raises(ValueError):
        SimConfig(models=[])


async def test_main_announces_its_address_serves_and_exits_on_sigterm():
    code = "import sys; from llama_balancer.sim import main; sys.exit(main(sys.argv[1:]))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "--port", "0", "--name", "cli", "--model", "m",
        "--slots", "3", "--fast", stdout=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=10)).decode()
        match = re.fullmatch(
            r"sim-backend cli listening on (http://127\.0\.0\.1:\d+) "
            r"models=\['m'\] slots=3\n", line)
        assert match, line
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{match.group(1)}/health") as resp:
                assert resp.status == 200
                assert resp.headers["X-Sim-Server"] == "cli"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
