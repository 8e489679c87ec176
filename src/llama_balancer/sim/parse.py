"""Turning a completion request body into a Job, with llama-server's error shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .dialects import (CHAT, CONVERSATIONS, EMBED, MESSAGES, NATIVE, OLLAMA, OLLAMA_EMBED, OLLAMA_GENERATE, RESPONSES,
                       TEXT, chat_messages, limit_value, offered_tools, streams, tool_choice)
from .params import DEFAULT_TEMPERATURE, generation_settings, slot_params
from .state import SimState
from .tokens import chat_tokens, continued_from, prompt_tokens, tokenize
from .tools import ToolCall, planned_call

UNPINNED = OLLAMA | {MESSAGES}  # endpoints that ignore a request's id_slot

__all__ = ["CHAT", "TEXT", "NATIVE", "EMBED", "Job", "SimHTTPError", "check_context", "decode_body", "parse_job"]


class SimHTTPError(Exception):
    """An error answered as llama-server's JSON: {"error": {code, message, type, ...}}."""

    def __init__(self, status: int, message: str, err_type: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "message": self.message,
                          "type": self.err_type, **self.extra}}


@dataclass
class Job:
    """What one completion request asks for, after parsing."""

    kind: str
    model: Any
    instance: str
    tokens: list[str]
    max_tokens: int
    explicit_limit: bool
    stream: bool = False
    include_usage: bool = False
    id_slot: int = -1
    cache_prompt: bool = True
    prompt_text: str = ""
    temperature: float = DEFAULT_TEMPERATURE
    ignore_eos: bool = False
    tool: ToolCall | None = None  # the tool call the model makes instead of text (tools.py)
    first_piece: int = 0  # the prompt ends with this many generated pieces: go on from there

    def _echoed(self) -> dict[str, Any]:
        """The request's values a real server echoes in its params (-1: no limit set)."""
        return {"n_predict": self.max_tokens if self.explicit_limit else -1, "stream": self.stream,
                "temperature": self.temperature, "ignore_eos": self.ignore_eos}

    def slot_params(self) -> dict[str, Any]:
        """``params`` of the slot running this job, as ``/slots`` shows them."""
        return slot_params(**self._echoed())

    def generation_settings(self) -> dict[str, Any]:
        """A native answer's ``generation_settings``."""
        return generation_settings(**self._echoed())


def decode_body(raw: bytes) -> dict[str, Any]:
    """Parse a JSON object body; like llama-server, bad JSON is a 500 server_error."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SimHTTPError(500, f"[json.exception.parse_error] {exc}", "server_error") from exc
    if not isinstance(body, dict):
        raise SimHTTPError(500, "[json.exception.type_error] body is not an object", "server_error")
    return body


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def _limit(kind: str, body: dict[str, Any]) -> int | None:
    """The requested generation length, or None when the request sets none."""
    value = _int_or_none(limit_value(kind, body))
    return value if value is not None and value >= 0 else None


def _tokens(kind: str, body: dict[str, Any]) -> list[str]:
    if kind in CONVERSATIONS:
        messages = chat_messages(kind, body)
        if messages is None:
            key = "input" if kind == RESPONSES else "messages"
            raise SimHTTPError(400, f"'{key}' is required and must be a list of objects", "invalid_request_error")
        tools = body.get("tools")
        return (tokenize(orjson.dumps(tools).decode()) if tools else []) + chat_tokens(messages)
    key = "input" if kind in (EMBED, OLLAMA_EMBED) else "prompt"
    if key not in body:
        raise SimHTTPError(400, f"\"{key}\" must be provided", "invalid_request_error")
    if kind == OLLAMA_GENERATE and isinstance(body.get("system"), str):
        return tokenize(body["system"]) + prompt_tokens(body[key])
    return prompt_tokens(body[key])


def _tool_call(kind: str, body: dict[str, Any]) -> ToolCall | None:
    """The tool the model calls (tools.py), for the endpoints that take tools."""
    tools = offered_tools(kind, body)
    if not tools:
        return None
    messages = chat_messages(kind, body) or []
    last = messages[-1].get("role") if messages else None
    return planned_call(tools, tool_choice(kind, body), last if isinstance(last, str) else None)


def parse_job(kind: str, body: dict[str, Any], state: SimState) -> Job:
    """Build the Job, or raise SimHTTPError (400) for a request the server refuses."""
    cfg = state.config
    tokens = _tokens(kind, body)
    limit = _limit(kind, body)
    stream_options = body.get("stream_options")
    # Like llama-server, /v1/messages keeps only the fields it converts (id_slot is not one).
    id_slot = None if kind in UNPINNED else _int_or_none(body.get("id_slot"))
    temperature = body.get("temperature")
    prompt_text = body["prompt"] if isinstance(body.get("prompt"), str) else ""
    return Job(
        kind=kind,
        model=body.get("model"),
        instance=state.instance_for(body.get("model")),
        tokens=tokens,
        max_tokens=cfg.default_max_tokens if limit is None else limit,
        explicit_limit=limit is not None,
        stream=streams(kind, body),
        include_usage=isinstance(stream_options, dict)
        and stream_options.get("include_usage") is True,
        id_slot=-1 if id_slot is None else id_slot,
        cache_prompt=body.get("cache_prompt") is not False,
        prompt_text=prompt_text,
        temperature=DEFAULT_TEMPERATURE if _int_or_none(temperature) is None else float(temperature),
        ignore_eos=body.get("ignore_eos") is True,
        tool=_tool_call(kind, body),
        first_piece=continued_from(prompt_text),
    )


def check_context(job: Job, n_ctx: int) -> None:
    """A prompt longer than a slot's context is a 400 exceed_context_size_error."""
    n = len(job.tokens)
    if n > n_ctx:
        raise SimHTTPError(
            400,
            f"request ({n} tokens) exceeds the available context size ({n_ctx} tokens), "
            "try increasing it",
            "exceed_context_size_error",
            n_prompt_tokens=n,
            n_ctx=n_ctx,
        )
