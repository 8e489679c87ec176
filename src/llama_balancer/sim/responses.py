"""``/v1/responses``: OpenAI's Responses API, in the shapes llama-server answers it.

A whole answer is ``{completed_at, created_at, id, model, object: "response", output:
[items], status: "completed", usage}`` with ``usage`` ``{input_tokens (cached part included),
output_tokens, total_tokens, input_tokens_details: {cached_tokens}}`` and no ``timings``. An
item is a ``message`` (one ``output_text`` part) or a ``function_call`` (``arguments`` as JSON
text, ``call_id``). A stream is named SSE events: ``response.created``,
``response.in_progress``, ``response.output_item.added`` (+ ``response.content_part.added``
for a message), one ``response.output_text.delta`` or ``response.function_call_arguments.delta``
per token, then ``response.output_text.done`` and ``response.content_part.done`` (a
message), ``response.output_item.done``, and ``response.completed`` with the whole response
and llama-server's ``timings``; no ``[DONE]``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from .anthropic import named_event
from .engine import Run
from .tools import call_id


def _ids(run: Run) -> tuple[str, str]:
    """(response id, message item id)."""
    return f"resp_sim{run.task_id}", f"msg_sim{run.task_id}"


def _usage(run: Run) -> dict[str, Any]:
    prompt, output = len(run.job.tokens), len(run.pieces)
    return {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output,
            "input_tokens_details": {"cached_tokens": run.cache_n}}


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _item(run: Run, status: str) -> dict[str, Any]:
    done = status == "completed"
    tool = run.job.tool
    if tool is None:
        return {"content": [_part(run.text)] if done else [], "id": _ids(run)[1], "role": "assistant",
                "status": status, "type": "message"}
    ident = call_id(run.task_id)
    return {"id": "fc_" + ident, "type": "function_call", "status": status,
            "arguments": run.text if done else "", "call_id": "call_" + ident, "name": tool.name}


def full(run: Run) -> bytes:
    now = int(time.time())
    return orjson.dumps({"completed_at": now, "created_at": now, "id": _ids(run)[0], "model": run.job.instance,
                         "object": "response", "output": [_item(run, "completed")], "status": "completed",
                         "usage": _usage(run)})


def opening(run: Run) -> list[bytes]:
    response = {"id": _ids(run)[0], "object": "response", "status": "in_progress"}
    events = [named_event("response.created", {"type": "response.created", "response": response}),
              named_event("response.in_progress", {"type": "response.in_progress", "response": response}),
              named_event("response.output_item.added", {"type": "response.output_item.added",
                                                          "item": _item(run, "in_progress")})]
    if run.job.tool is None:
        events.append(named_event("response.content_part.added", {
            "type": "response.content_part.added", "item_id": _ids(run)[1],
            "part": {"type": "output_text", "text": ""}}))
    return events


def token(run: Run, piece: str) -> list[bytes]:
    if run.job.tool is None:
        return [named_event("response.output_text.delta", {"type": "response.output_text.delta",
                                                           "item_id": _ids(run)[1], "delta": piece})]
    return [named_event("response.function_call_arguments.delta", {
        "type": "response.function_call_arguments.delta", "delta": piece, "item_id": "fc_" + call_id(run.task_id)})]


def closing(run: Run) -> list[bytes]:
    events = []
    item = _item(run, "completed")
    if run.job.tool is None:
        message_id = _ids(run)[1]
        events += [named_event("response.output_text.done", {"type": "response.output_text.done",
                                                             "item_id": message_id, "text": run.text}),
                   named_event("response.content_part.done", {"type": "response.content_part.done",
                                                              "item_id": message_id, "part": _part(run.text)})]
    events.append(named_event("response.output_item.done", {"type": "response.output_item.done", "item": item}))
    response = {"id": _ids(run)[0], "object": "response", "created_at": int(time.time()), "status": "completed",
                "model": run.job.instance, "output": [item], "usage": _usage(run)}
    events.append(named_event("response.completed", {"type": "response.completed", "response": response,
                                                     "timings": run.timings()}))
    return events
