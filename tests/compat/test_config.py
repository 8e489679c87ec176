"""SPEC Part A, "Config": server-list.json from $SERVER_LIST_JSON or the working directory,
and bad files refused with the JSON path of each problem."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from llama_balancer.cli import main

GOOD = {
    "servers": {
        "PC1": {"addr": "http://192.168.1.20", "health-port": 18000, "model-port": 8081, "request-max": 1},
        "PC2": {"addr": "http://192.168.1.21", "health-port": 18000, "model-port": 8081},
    },
    "models": {"gpt-oss:20b-64k.*": ["PC1", "PC2"], "gpt-oss:20b-128k.*": ["PC1"]},
    "fallback_server": "PC2",
}


def with_change(path: str, value) -> dict:
    """GOOD with one dotted path set (or removed when value is ...)."""
    data = json.loads(json.dumps(GOOD))
    *parents, last = path.split("/")
    node = data
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


MALFORMED = [
    ("servers/PC1/model-port", "8081a", 'servers.PC1.model-port: expected an integer, got "8081a"'),
    ("servers/PC1/health-port", 70000, "servers.PC1.health-port: must be at most 65535, got 70000"),
    ("servers/PC1/addr", "192.168.1.20", "servers.PC1.addr: expected a base URL with scheme"),
    ("servers/PC1/addr", ..., "servers.PC1.addr: required field is missing"),
    ("servers/PC1/request-max", 0, "servers.PC1.request-max: must be greater than 0, got 0"),
    ("servers/PC1/request-max", "two", 'servers.PC1.request-max: expected an integer, got "two"'),
    ("servers/PC2/model_port", 8081, "servers.PC2.model_port: unknown field"),
    ("servers/PC2", "http://x", 'servers.PC2: expected a JSON object, got "http://x"'),
    ("servers", {}, "servers: must not be empty"),
    ("servers", ..., "servers: required field is missing"),
    ("models/gpt-oss:20b-128k.*", ["PC1", "PC9"], 'models["gpt-oss:20b-128k.*"][1]: unknown server \'PC9\''),
    ("models/gpt-oss(", ["PC1"], 'models["gpt-oss("]: invalid regular expression'),
    ("models/gpt-oss:20b-64k.*", "PC1", 'models["gpt-oss:20b-64k.*"]: expected a JSON array, got "PC1"'),
    ("models/empty", [], "models.empty: expected at least one server name"),
    ("fallback_server", "PC3", "fallback_server: unknown server 'PC3'"),
]


@pytest.mark.parametrize("path, value, message", MALFORMED, ids=[m[0] + ":" + str(m[1]) for m in MALFORMED])
def test_check_config_refuses_a_malformed_file_naming_the_json_path(tmp_path, capsys, path, value, message):
    config = tmp_path / "server-list.json"
    config.write_text(json.dumps(with_change(path, value)))
    assert main(["check-config", str(config)]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [("{", "not valid JSON"), ("[]", "(root): expected a JSON object")])
def test_check_config_refuses_a_file_that_is_not_a_json_object(tmp_path, capsys, text, message):
    config = tmp_path / "server-list.json"
    config.write_text(text)
    assert main(["check-config", str(config)]) == 1
    assert message in capsys.readouterr().err


def test_check_config_explains_a_good_file(tmp_path, capsys):
    config = tmp_path / "server-list.json"
    config.write_text(json.dumps(GOOD))
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "PC1: models at http://192.168.1.20:8081, health at http://192.168.1.20:18000/llmhealth" in out
    assert "'gpt-oss:20b-64k.*' -> PC1 then PC2" in out
    assert "anything else -> PC2 (fallback)" in out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(cwd, env_path: str | None, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SERVER_LIST_JSON"}
    if env_path:
        env["SERVER_LIST_JSON"] = env_path
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_balancer", "serve", "--host", "127.0.0.1", "--port", str(port), *extra],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, port


def fetch_snapshot(process: subprocess.Popen, port: int) -> dict:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/llmhealth-snapshot", timeout=1) as answer:
                return json.load(answer)
        except OSError:
            time.sleep(0.1)
    raise AssertionError("balancer did not start")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)


def test_serve_reads_the_file_named_by_server_list_json(tmp_path):
    config = tmp_path / "elsewhere.json"
    config.write_text(json.dumps(GOOD))
    process, port = serve(tmp_path / "..", str(config))
    try:
        snap = fetch_snapshot(process, port)
        assert sorted(snap["servers"]) == ["PC1", "PC2"]
        assert snap["config"]["path"] == str(config)
    finally:
        stop(process)


def test_serve_defaults_to_server_list_json_in_the_working_directory(tmp_path):
    (tmp_path / "server-list.json").write_text(json.dumps(GOOD))
    process, port = serve(tmp_path, None)
    try:
        assert fetch_snapshot(process, port)["models"] == GOOD["models"]
    finally:
        stop(process)


def test_serve_refuses_a_bad_file_with_the_path_and_exit_status_1(tmp_path):
    (tmp_path / "server-list.json").write_text(json.dumps(with_change("servers/PC1/model-port", "8081a")))
    process, _ = serve(tmp_path, None)
    assert process.wait(timeout=15) == 1
    assert 'servers.PC1.model-port: expected an integer, got "8081a"' in process.stderr.read()


def test_serve_says_where_it_looked_when_the_file_is_missing(tmp_path):
    process, _ = serve(tmp_path, None)
    assert process.wait(timeout=15) == 1
    assert "config file not found: server-list.json" in process.stderr.read()


def test_the_shipped_sample_config_is_valid_and_carries_the_gpt_oss_rules(capsys):
    sample = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "server-list.json")
    assert main(["check-config", sample]) == 0
    out = capsys.readouterr().out
    assert "rewrite: '(gpt-oss.*)-(low|medium|high)'" in out and "rewrite: '(gpt-oss.*)-(apply|edit)'" in out
