"""``llama-balancer demo``: three simulated llama-servers behind the balancer, no GPU needed.

PC1 serves two instances of ``llama-3.1-8b`` (``llama-3.1-8b`` and ``llama-3.1-8b-2``),
PC2 serves ``llama-3.1-8b`` and ``qwen2.5-7b``, PC3 serves ``qwen2.5-7b`` and ``gpt-oss:20b``
(with the two documented rewrite rules, so ``gpt-oss:20b-high`` works). The banner shows a
command for each API the sims answer: chat with a tool call, Anthropic messages, OpenAI
responses, Ollama's chat.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..core.config import parse_config
from ..runtime import Runtime, run, serve_until_signal

# Three ways of reading a backend: llama-server's own endpoints, detection (no "kind", as
# in the old tool's files), the agent alone.
DEMO_BACKENDS: list[dict[str, Any]] = [
    {"name": "PC1", "models": ["llama-3.1-8b"], "instances": 2, "kind": "llama.cpp"},
    {"name": "PC2", "models": ["llama-3.1-8b", "qwen2.5-7b"], "instances": 1, "kind": None},
    {"name": "PC3", "models": ["qwen2.5-7b", "gpt-oss:20b"], "instances": 1, "kind": "agent"},
]

GPT_OSS_REWRITES: list[dict[str, Any]] = [
    {"match": "(gpt-oss.*)-(low|medium|high)", "model": "\\1",
     "merge": {"chat_template_kwargs": {"reasoning_effort": "\\2"}}},
    {"match": "(gpt-oss.*)-(apply|edit)", "model": "\\1", "merge": {"reasoning_format": "auto"}},
]


def example_commands(base: str) -> list[str]:
    """What to try against the demo: every API it answers, one command each."""
    post = "-H 'Content-Type: application/json' -d"
    tool = ('"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": '
            '{"type": "object", "properties": {"city": {"type": "string"}}}}}]')
    hi = '"messages": [{"role": "user", "content": "Hi"}]'
    return [
        "Try (Anthropic SDK: Anthropic(base_url=\"" + base + "\"); OpenAI SDK: OpenAI(base_url=\"" + base + "/v1\")):",
        f"  curl -N {base}/v1/chat/completions {post} '{{\"model\": \"llama-3.1-8b\", \"stream\": true, {hi}, {tool}}}'",
        f"  curl {base}/v1/messages {post} '{{\"model\": \"qwen2.5-7b\", \"max_tokens\": 16, {hi}}}'",
        f"  curl -N {base}/v1/responses {post} '{{\"model\": \"llama-3.1-8b\", \"stream\": true, \"input\": \"Hi\"}}'",
        f"  curl -N {base}/api/chat {post} '{{\"model\": \"qwen2.5-7b\", {hi}}}'   # Ollama's API, NDJSON",
    ]


def demo_config(ports: dict[str, int], request_max: int = 4) -> dict[str, Any]:
    """The demo's server-list.json: each sim serves its models and /llmhealth on one port."""
    kinds = {b["name"]: b["kind"] for b in DEMO_BACKENDS}
    return {
        "servers": {
            name: {"addr": "http://127.0.0.1", "health-port": port, "model-port": port,
                   "request-max": request_max, **({"kind": kinds[name]} if kinds[name] else {})}
            for name, port in ports.items()
        },
        "models": {
            "llama-3\\.1-8b": ["PC1", "PC2"],
            "qwen2\\.5-7b": ["PC2", "PC3"],
            "gpt-oss:20b.*": ["PC3"],
        },
        "fallback_server": "PC2",
        "rewrites": GPT_OSS_REWRITES,
    }


async def _demo(host: str, port: int) -> None:
    from ..sim import SimConfig, start_sim

    sims = [await start_sim(SimConfig(name=b["name"], models=b["models"], instances=b["instances"],
                                      slots=2, prompt_tps=4000.0, gen_tps=40.0, default_max_tokens=64))
            for b in DEMO_BACKENDS]
    folder = Path(tempfile.mkdtemp(prefix="llama-balancer-demo-"))
    try:
        data = demo_config({b["name"]: sim.port for b, sim in zip(DEMO_BACKENDS, sims)})
        path = folder / "server-list.json"
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
        runtime = Runtime(parse_config(path.read_bytes()), config_path=str(path))
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        banner = [
            f"demo config written to {path}",
            *(f"  {b['name']}: simulated llama-server at {s.url} serving {', '.join(b['models'])}"
              + (f" x{b['instances']} instances" if b["instances"] > 1 else "")
              for b, s in zip(DEMO_BACKENDS, sims)),
            f"OpenAI API base URL: http://{shown}:{port}/v1   (models: llama-3.1-8b, qwen2.5-7b, gpt-oss:20b-high)",
            f"Dashboard:           http://{shown}:{port}/llmhealth-monitor",
            *example_commands(f"http://{shown}:{port}"),
            "Press Ctrl-C to stop.",
        ]
        await serve_until_signal(runtime, host, port, banner)
    finally:
        for sim in sims:
            await sim.close()
        shutil.rmtree(folder, ignore_errors=True)  # the demo's config lives as long as the demo


def run_demo(host: str, port: int) -> int:
    run(_demo(host, port))
    return 0
