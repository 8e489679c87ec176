"""``llama-balancer demo``: three simulated backends behind the balancer, no GPU, Ctrl-C stops it."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request

import anthropic
import openai

from tests.compat.test_config import free_port


def test_the_demo_serves_the_openai_api_and_the_dashboard_and_stops_on_ctrl_c():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "llama_balancer", "demo", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        deadline = time.monotonic() + 20
        while not any("Press Ctrl-C" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            lines.append(process.stdout.readline())
        banner = "".join(lines)
        config_path = banner.split("demo config written to ", 1)[1].split("\n", 1)[0].strip()
        assert os.path.exists(config_path)
        assert f"OpenAI API base URL: http://127.0.0.1:{port}/v1" in banner
        assert f"Dashboard:           http://127.0.0.1:{port}/llmhealth-monitor" in banner
        assert "x2 instances" in banner

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["gpt-oss:20b", "llama-3.1-8b", "qwen2.5-7b"]
        answer = client.chat.completions.create(model="gpt-oss:20b-high", max_tokens=3,
                                                messages=[{"role": "user", "content": "hi"}])
        assert answer.model == "gpt-oss:20b" and answer.usage.completion_tokens == 3
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/llmhealth-snapshot") as reply:
            snap = json.load(reply)
        assert [b["name"] for b in snap["backends"]] == ["PC1", "PC2", "PC3"]
        assert {b["kind"] for b in snap["backends"]} == {"llama.cpp", "agent"}  # auto -> llama.cpp
        try_examples(banner, port)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    assert not os.path.exists(os.path.dirname(config_path)), "the demo's temporary config outlived it"


def try_examples(banner: str, port: int) -> None:
    """The example commands the demo prints work as printed (run here without curl), and the
    Anthropic SDK line too."""
    examples = [shlex.split(line, comments=True) for line in banner.splitlines() if line.startswith("  curl ")]
    answers = {}
    for args in examples:
        url = next(arg for arg in args if arg.startswith("http://"))
        request = urllib.request.Request(url, data=args[args.index("-d") + 1].encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            answers[url.split(str(port), 1)[1]] = reply.read()
    assert set(answers) == {"/v1/chat/completions", "/v1/messages", "/v1/responses", "/api/chat"}
    assert b'"tool_calls"' in answers["/v1/chat/completions"] and b'"finish_reason":"tool_calls"' in answers[
        "/v1/chat/completions"]
    assert json.loads(answers["/v1/messages"])["content"][0]["type"] == "text"
    assert b"event: response.completed" in answers["/v1/responses"]
    assert json.loads(answers["/api/chat"].splitlines()[-1])["done"] is True
    assert f'Anthropic(base_url="http://127.0.0.1:{port}")' in banner
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="unused", max_retries=0)
    message = client.messages.create(model="qwen2.5-7b", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert message.usage.output_tokens == 2
