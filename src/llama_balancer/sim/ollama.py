"""Ollama's native API: ``/api/chat``, ``/api/generate``, ``/api/embed`` and ``/api/embeddings``.

Ollama streams unless a request says ``"stream": false``, as NDJSON (``application/x-ndjson``):
one JSON object a line, ``{"model", "created_at", "message": {"role", "content"}, "done":
false}`` per token (``"response"`` instead of ``"message"`` for ``/api/generate``), then a last
line with ``"done": true``, ``done_reason`` (``stop`` or ``length``), ``total_duration``,
``load_duration``, ``prompt_eval_count``, ``prompt_eval_duration``, ``eval_count``,
``eval_duration`` (durations in nanoseconds; ``/api/generate`` adds ``context``, the token
ids). A whole answer is that last line with all the text. A tool call comes whole, in one
``message.tool_calls`` line (``[{"function": {"name", "arguments": {...}}}]``) before the last
one, not as text. ``/api/embed`` answers ``{"model", "embeddings": [[...]], "total_duration",
"load_duration", "prompt_eval_count"}``; the older ``/api/embeddings`` ``{"embedding": [...]}``.
Errors are ``{"error": "message"}``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import orjson

from .dialects import OLLAMA_CHAT, OLLAMA_EMBED
from .engine import Run
from .generate import embed, token_id
from .tools import parsed_arguments

NDJSON = "application/x-ndjson"
LOAD_NS = 1_000_000  # the sim's models are always loaded: a nominal millisecond


def created_at() -> str:
    """Now in Ollama's RFC 3339 form, UTC: ``2025-06-01T10:00:00.123456Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


def _start(run: Run) -> dict[str, Any]:
    return {"model": run.job.instance, "created_at": created_at()}


def _text(run: Run, text: str) -> dict[str, Any]:
    if run.job.kind == OLLAMA_CHAT:
        return {"message": {"role": "assistant", "content": text}}
    return {"response": text}


def _final(run: Run, text: str) -> dict[str, Any]:
    prompt_ns, eval_ns = int(run.prompt_s * 1e9), int(run.predicted_s * 1e9)
    body = _start(run) | _text(run, text)
    if run.job.kind == OLLAMA_CHAT and run.job.tool is not None and text:
        body["message"] = _tool_message(run)
    body |= {"done": True, "done_reason": "length" if run.finish_reason == "length" else "stop"}
    if run.job.kind != OLLAMA_CHAT:
        body["context"] = [token_id(i) for i in range(len(run.job.tokens) + len(run.pieces))]
    return body | {"total_duration": LOAD_NS + prompt_ns + eval_ns, "load_duration": LOAD_NS,
                   "prompt_eval_count": len(run.job.tokens), "prompt_eval_duration": prompt_ns,
                   "eval_count": len(run.pieces), "eval_duration": eval_ns}


def _tool_message(run: Run) -> dict[str, Any]:
    tool = run.job.tool
    assert tool is not None
    call = {"function": {"name": tool.name, "arguments": parsed_arguments(run.text)}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def full(run: Run) -> bytes:
    return orjson.dumps(_final(run, run.text))


def opening(run: Run) -> list[bytes]:
    return []


def token(run: Run, piece: str) -> list[bytes]:
    if run.job.tool is not None:
        return []  # Ollama parses a tool call out of the generated text and sends it whole
    return [_line(_start(run) | _text(run, piece) | {"done": False})]


def closing(run: Run) -> list[bytes]:
    lines = []
    if run.job.tool is not None and run.job.kind == OLLAMA_CHAT:
        lines.append(_line(_start(run) | {"message": _tool_message(run), "done": False}))
    return lines + [_line(_final(run, ""))]


def embedding_body(kind: str, instance: str, inputs: list[str], n_tokens: int, started: float) -> dict[str, Any]:
    """``/api/embed`` (every input) or ``/api/embeddings`` (one prompt)."""
    if kind != OLLAMA_EMBED:
        return {"embedding": embed(inputs[0]) if inputs else []}
    took = int((time.monotonic() - started) * 1e9)
    return {"model": instance, "embeddings": [embed(text) for text in inputs], "total_duration": LOAD_NS + took,
            "load_duration": LOAD_NS, "prompt_eval_count": n_tokens}


def error_body(message: str) -> dict[str, Any]:
    return {"error": message}
