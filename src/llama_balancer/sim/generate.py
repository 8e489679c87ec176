"""Response bodies and stream events, in the shapes llama-server sends them.

Chat (/v1/chat/completions) and text (/v1/completions) streams are OpenAI SSE ending in
``data: [DONE]``; the native /completion stream sends ``{"content", "tokens", "stop": false}``
events and a last ``"stop": true`` event, with no [DONE]. Where usage and timings go follows
the real server: a chat stream's finish chunk carries ``timings``, unless
``stream_options.include_usage`` asks for a usage chunk (``choices: []``), which then carries
both; a text stream's finish chunk always carries ``usage`` and ``timings``, and no usage
chunk follows. tests/real/test_contract.py holds these shapes to a real llama-server's.

A chat that calls a tool (tools.py) streams, after the role delta, one delta naming the call
(``tool_calls[0]``: ``index``, ``id``, ``type: "function"``, ``function: {name, arguments: ""}``,
as OpenAI sends it; llama-server leaves out the empty ``arguments``), then one delta per
argument fragment (``{index, function: {arguments}}``), and finishes with ``"tool_calls"``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from .engine import Run
from .parse import CHAT, NATIVE
from .tools import call_id

DONE = b"data: [DONE]\n\n"
FINGERPRINT = "b0-sim"


def sse(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _ident(run: Run) -> str:
    return f"chatcmpl-sim{run.task_id}"  # llama-server says chatcmpl- for text completions too


def _envelope(run: Run, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": _ident(run),
        "object": obj,
        "created": run.created,
        "model": run.job.instance,
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
    }


def _native_final(run: Run, content: str) -> dict[str, Any]:
    job = run.job
    return {
        "index": 0,
        "content": content,
        "tokens": [],
        "id_slot": run.slot_id,
        "stop": True,
        "model": job.instance,
        "tokens_predicted": len(run.pieces),
        "tokens_evaluated": len(job.tokens),
        "generation_settings": job.generation_settings(),
        "prompt": job.prompt_text,
        "has_new_line": False,
        "truncated": False,
        "stop_type": "limit" if run.finish_reason == "length" else "eos",
        "stopping_word": "",
        "tokens_cached": len(job.tokens) + len(run.pieces),
        "timings": run.timings(),
    }


def full_body(run: Run) -> dict[str, Any]:
    """The non-streaming answer for the run's endpoint."""
    kind = run.job.kind
    if kind == NATIVE:
        return _native_final(run, run.text)
    if kind == CHAT:
        choice = {"index": 0, "finish_reason": run.finish_reason, "message": _message(run)}
        body = _envelope(run, "chat.completion", [choice])
    else:
        choice = {"index": 0, "finish_reason": run.finish_reason,
                  "text": run.text, "logprobs": None}
        body = _envelope(run, "text_completion", [choice])
    body["usage"] = run.usage()
    body["timings"] = run.timings()
    return body


def _message(run: Run) -> dict[str, Any]:
    """A whole chat answer's message: the text, or (content empty) the tool call."""
    tool = run.job.tool
    if tool is None:
        return {"role": "assistant", "content": run.text}
    call = {"type": "function", "function": {"name": tool.name, "arguments": run.text}, "id": call_id(run.task_id)}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def _delta(run: Run, delta: dict[str, Any]) -> dict[str, Any]:
    return _envelope(run, "chat.completion.chunk", [{"index": 0, "finish_reason": None, "delta": delta}])


def opening_events(run: Run) -> list[dict[str, Any]]:
    """Events before the first token: the chat role delta, and the tool call's name when
    the model calls one (none for other endpoints)."""
    if run.job.kind != CHAT:
        return []
    events = [_delta(run, {"role": "assistant", "content": None})]
    tool = run.job.tool
    if tool is not None:
        call = {"index": 0, "id": call_id(run.task_id), "type": "function",
                "function": {"name": tool.name, "arguments": ""}}
        events.append(_delta(run, {"tool_calls": [call]}))
    return events


def token_event(run: Run, piece: str) -> dict[str, Any]:
    """The event that carries one generated token."""
    kind = run.job.kind
    if kind == NATIVE:  # a partial result: the real server says id_slot -1 until the end
        return {"index": 0, "content": piece, "tokens": [token_id(len(run.pieces) - 1)], "stop": False,
                "id_slot": -1, "tokens_predicted": len(run.pieces),
                "tokens_evaluated": len(run.job.tokens)}
    if kind == CHAT:
        if run.job.tool is not None:
            return _delta(run, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        return _delta(run, {"content": piece})
    choice = {"index": 0, "finish_reason": None, "text": piece, "logprobs": None}
    return _envelope(run, "text_completion", [choice])


def closing_events(run: Run) -> list[dict[str, Any]]:
    """Events after the last token: the finish chunk, and for chat with include_usage a usage
    chunk; ``timings`` ride on the last of them (see the module docstring)."""
    kind = run.job.kind
    if kind == NATIVE:
        return [_native_final(run, "")]
    if kind != CHAT:
        choice = {"index": 0, "finish_reason": run.finish_reason, "text": "", "logprobs": None}
        finish = _envelope(run, "text_completion", [choice])
        finish["usage"] = run.usage()
        finish["timings"] = run.timings()
        return [finish]
    choice = {"index": 0, "finish_reason": run.finish_reason, "delta": {}}
    finish = _envelope(run, "chat.completion.chunk", [choice])
    if not run.job.include_usage:
        finish["timings"] = run.timings()
        return [finish]
    usage = _envelope(run, "chat.completion.chunk", [])
    usage["usage"] = run.usage()
    usage["timings"] = run.timings()
    return [finish, usage]


def token_id(index: int) -> int:
    """A token id for the index-th generated token (the toy tokenizer has none of its own)."""
    return 1000 + index


def terminator(run: Run) -> bytes:
    """What ends the stream: [DONE] for OpenAI endpoints, nothing for native."""
    return b"" if run.job.kind == NATIVE else DONE


def embedding_body(instance: str, inputs: list[str], n_tokens: int) -> dict[str, Any]:
    """An OpenAI embeddings list; vectors come from `embed` below."""
    data = [{"object": "embedding", "index": i, "embedding": embed(text)}
            for i, text in enumerate(inputs)]
    return {"object": "list", "data": data, "model": instance,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


def embed(text: str, dim: int = 8) -> list[float]:
    """A small deterministic unit vector derived from the text's bytes."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:dim]]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [x / norm for x in raw]

