"""``/v1/messages``: Anthropic's Messages API, in the shapes llama-server answers it.

A whole answer is ``{id, type: "message", role, content: [blocks], model, stop_reason,
stop_sequence, usage}``; ``usage`` counts ``input_tokens`` *without* the cached part, which is
``cache_read_input_tokens`` (Anthropic's way; OpenAI's prompt_tokens include it). A stream is
named SSE events (``event: NAME`` then ``data: {...}``): ``message_start`` (the usage so far),
``content_block_start``, one ``content_block_delta`` per token (``text_delta``, or
``input_json_delta`` fragments of a ``tool_use`` block's input), ``content_block_stop``,
``message_delta`` (``stop_reason``: ``end_turn``, ``max_tokens`` or ``tool_use``; the output
tokens), ``message_stop``; no ``[DONE]``, no ``ping`` (llama-server sends none). A
``tool_use`` block starts with ``"input": {}`` as Anthropic's API sends it.
"""

from __future__ import annotations

from typing import Any

import orjson

from .engine import Run
from .tools import call_id, parsed_arguments


def named_event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event with a name: ``event: NAME`` and a JSON ``data:`` line."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _usage(run: Run, output_tokens: int) -> dict[str, Any]:
    return {"cache_read_input_tokens": run.cache_n, "input_tokens": len(run.job.tokens) - run.cache_n,
            "output_tokens": output_tokens}


def stop_reason(run: Run) -> str:
    return {"tool_calls": "tool_use", "length": "max_tokens"}.get(run.finish_reason, "end_turn")


def _ident(run: Run) -> str:
    return f"chatcmpl-sim{run.task_id}"  # llama-server's message ids are its chat completion ids


def _block(run: Run, whole: bool) -> dict[str, Any]:
    tool = run.job.tool
    if tool is None:
        return {"type": "text", "text": run.text if whole else ""}
    return {"type": "tool_use", "id": call_id(run.task_id), "name": tool.name,
            "input": parsed_arguments(run.text) if whole else {}}


def full(run: Run) -> bytes:
    content = [_block(run, whole=True)] if run.pieces else []
    return orjson.dumps({"id": _ident(run), "type": "message", "role": "assistant", "content": content,
                         "model": run.job.instance, "stop_reason": stop_reason(run), "stop_sequence": None,
                         "usage": _usage(run, len(run.pieces))})


def opening(run: Run) -> list[bytes]:
    message = {"id": _ident(run), "type": "message", "role": "assistant", "content": [], "model": run.job.instance,
               "stop_reason": None, "stop_sequence": None, "usage": _usage(run, 0)}
    return [named_event("message_start", {"type": "message_start", "message": message}),
            named_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                "content_block": _block(run, whole=False)})]


def token(run: Run, piece: str) -> list[bytes]:
    if run.job.tool is None:
        delta = {"type": "text_delta", "text": piece}
    else:
        delta = {"type": "input_json_delta", "partial_json": piece}
    return [named_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})]


def closing(run: Run) -> list[bytes]:
    return [named_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            named_event("message_delta", {"type": "message_delta",
                                          "delta": {"stop_reason": stop_reason(run), "stop_sequence": None},
                                          "usage": {"output_tokens": len(run.pieces)}}),
            named_event("message_stop", {"type": "message_stop"})]
