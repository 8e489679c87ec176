"""Mid-stream resume: what a broken stream had said, and how another server continues it.

A streamed chat or text completion that breaks after bytes reached the client (the backend
died, stalled or sent garbage) is continued on another server of the same model, and the
client sees one uninterrupted stream. Pure: events in, events and request bodies out.

How the continuation is asked for (measured on llama-server, tiny model, greedy decoding):
``/v1/chat/completions`` with ``continue_final_message`` is *not* token-exact (the continued
text differed at every cut tried), but a text completion of the rendered chat prompt is:
``POST /apply-template`` renders the original messages, and ``/v1/completions`` with
``prompt`` = that rendering + the text generated so far continues exactly where the first
server stopped (cuts at 1, 7, 50, 123 and 199 of 200 tokens: identical text). A text
completion is continued the same way with ``prompt`` = its prompt + the text so far.

What cannot be continued exactly is not continued (``refusal``, ``StreamLog.blocked``):
tools and tool calls, structured output (grammar, JSON schema), ``n`` > 1, log-probs, echo,
token-id prompts, and reasoning text in progress.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

CHAT_PATH = "/v1/chat/completions"
TEXT_PATH = "/v1/completions"
RESUMABLE_PATHS = (CHAT_PATH, TEXT_PATH)
DONE_EVENT = b"data: [DONE]\n\n"

Kind = Literal["chat", "text"]

# Request fields whose answers a text continuation cannot reproduce.
_REFUSED_FIELDS = {
    "tools": "tools", "functions": "functions", "tool_choice": "tool calls",
    "response_format": "response_format", "grammar": "a grammar", "json_schema": "a JSON schema",
    "logprobs": "logprobs", "top_logprobs": "logprobs", "n_probs": "logprobs", "echo": "echo",
}
# Chat-only fields a text completion does not take (the rendered prompt holds what they said).
_CHAT_ONLY = ("messages", "stream_options", "chat_template_kwargs", "reasoning_format", "parallel_tool_calls",
              "add_generation_prompt", "continue_final_message", "max_completion_tokens", "n", "tools",
              "tool_choice", "response_format")


def refusal(path: str, payload: Any) -> str | None:
    """Why a request's stream could not be resumed exactly, or None when it could."""
    if path not in RESUMABLE_PATHS:
        return f"{path} is not resumed"
    if not isinstance(payload, dict) or payload.get("stream") is not True:
        return "not a stream"
    for name, what in _REFUSED_FIELDS.items():
        if payload.get(name) not in (None, False, [], {}):
            return f"the request asks for {what}"
    if payload.get("n") not in (None, 1):
        return "n > 1"
    if path == TEXT_PATH and not isinstance(payload.get("prompt"), str):
        return "the prompt is not one string"
    if path == CHAT_PATH and not isinstance(payload.get("messages"), list):
        return "no messages"
    return None


def kind_of(path: str) -> Kind:
    return "chat" if path == CHAT_PATH else "text"


def _data(event: bytes) -> bytes | None:
    """The data of one SSE event (``data: ...``), or None for a comment or another field."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            return value[1:] if value.startswith(b" ") else value
    return None


@dataclass
class StreamLog:
    """What the client has been sent of one stream, event by event (``note``)."""

    kind: Kind
    include_usage: bool = False
    envelope: dict[str, Any] | None = None  # the first chunk's id, created, model, object, system_fingerprint
    parts: list[str] = field(default_factory=list)  # the generated text, one part per content event
    finish: str | None = None  # the finish_reason the client was sent
    done: bool = False  # "data: [DONE]" was sent
    blocked: str | None = None  # why the stream can no longer be resumed

    @property
    def generated(self) -> int:
        """Content events sent: llama-server sends one per token (a UTF-8 character cut
        across tokens waits for its end, so a rare event carries two)."""
        return len(self.parts)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def note(self, event: bytes) -> None:
        """One complete event as it went to the client."""
        data = _data(event)
        if data is None or self.blocked is not None:
            return
        if data.strip() == b"[DONE]":
            self.done = True
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.blocked = "the backend sent an event that is not JSON"
            return
        if not isinstance(chunk, dict):
            return
        if "error" in chunk:
            self.blocked = "the backend sent an error event"
            return
        if self.envelope is None and "id" in chunk:
            self.envelope = {key: chunk[key] for key in ("id", "object", "created", "model", "system_fingerprint")
                             if key in chunk}
        for choice in chunk.get("choices") or ():
            self._choice(choice)

    def _choice(self, choice: dict[str, Any]) -> None:
        if choice.get("index", 0) != 0:
            self.blocked = "more than one choice"
            return
        if self.kind == "chat":
            delta = choice.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call"):
                self.blocked = "a tool call is in progress"
            elif delta.get("reasoning_content"):
                self.blocked = "reasoning text is in progress"
            text = delta.get("content")
        else:
            text = choice.get("text")
        if isinstance(text, str) and text:
            self.parts.append(text)
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]

    def resumable(self) -> str | None:
        """Why this stream cannot be continued now, or None."""
        if self.blocked is not None:
            return self.blocked
        if self.envelope is None:
            return "no chunk of the answer reached the client"
        return None


def continuation(log: StreamLog, payload: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The ``/v1/completions`` body that continues the stream: ``prefix`` is the chat's
    rendered prompt (``/apply-template``) or the text completion's own prompt."""
    body = {key: value for key, value in payload.items() if key not in _CHAT_ONLY}
    body["prompt"] = prefix + log.text
    body["stream"] = True
    limit = payload.get("max_completion_tokens", payload.get("max_tokens"))
    if isinstance(limit, int) and limit > 0:
        body["max_tokens"] = max(limit - log.generated, 1)
    for key in ("n_predict",):
        value = payload.get(key)
        if isinstance(value, int) and value > 0:
            body[key] = max(value - log.generated, 1)
    return body


def template_request(payload: dict[str, Any]) -> dict[str, Any]:
    """The ``/apply-template`` body that renders a chat's prompt as its server saw it."""
    return {key: value for key, value in payload.items() if key not in ("stream", "stream_options")}


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


class Splice:
    """Turns the continuation's events (a text completion stream) into events of the
    original stream: its id, created, model and fingerprint; chat deltas for a chat (no
    second role delta); one finish, one usage (the first request's prompt, the completion
    tokens of both) and timings where the original would carry them (the continuation's,
    counted for the whole answer: ``_timings``)."""

    def __init__(self, log: StreamLog) -> None:
        self.log = log
        self._before = log.generated  # content events the client had before this continuation
        self._parts: list[str] = []

    def events(self, event: bytes) -> list[bytes]:
        data = _data(event)
        if data is None:
            return []
        if data.strip() == b"[DONE]":
            return [DONE_EVENT]
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return [event]  # relayed as sent; the log marks the stream blocked
        if not isinstance(chunk, dict) or "error" in chunk:
            return [event]
        choices = chunk.get("choices") or [{}]
        choice = choices[0]
        text = choice.get("text") or ""
        finish = choice.get("finish_reason")
        out: list[bytes] = []
        if text:
            self._parts.append(text)
            out.append(self._text_chunk(text, None if self.log.kind == "chat" else finish,
                                        chunk if self.log.kind == "text" and finish else None))
        if finish:
            out += self._finish(finish, chunk, text_sent=bool(text))
        return out

    def _envelope(self, chunk: dict[str, Any]) -> dict[str, Any]:
        envelope = dict(self.log.envelope or {})
        if self.log.kind == "chat":
            envelope["object"] = "chat.completion.chunk"
        for key in ("id", "created", "model", "system_fingerprint"):
            envelope.setdefault(key, chunk.get(key))
        return envelope

    def _text_chunk(self, text: str, finish: str | None, final: dict[str, Any] | None) -> bytes:
        if self.log.kind == "chat":
            choice: dict[str, Any] = {"finish_reason": None, "index": 0, "delta": {"content": text}}
            return _event({"choices": [choice], **self._envelope({})})
        out: dict[str, Any] = {"choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
                               **self._envelope(final or {})}
        if final is not None:
            out.update(self._counts(final))
        return _event(out)

    def _finish(self, finish: str, chunk: dict[str, Any], text_sent: bool) -> list[bytes]:
        if self.log.kind == "text":
            if text_sent:
                return []  # the text chunk carried the finish
            out = {"choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish}],
                   **self._envelope(chunk)}
            out.update(self._counts(chunk))
            return [_event(out)]
        final: dict[str, Any] = {"choices": [{"finish_reason": finish, "index": 0, "delta": {}}],
                                 **self._envelope(chunk)}
        counts = self._counts(chunk)
        if not self.log.include_usage:
            if "timings" in counts:
                final["timings"] = counts["timings"]
            return [_event(final)]
        usage_chunk = {"choices": [], **self._envelope(chunk), **counts}
        return [_event(final), _event(usage_chunk)]

    def _counts(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """usage for the whole answer: the continuation's prompt was the original prompt plus
        the text sent before it, so the original prompt is its count less those tokens."""
        out: dict[str, Any] = {}
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            before = self._before
            prompt = max(int(usage.get("prompt_tokens") or 0) - before, 0)
            completion = before + int(usage.get("completion_tokens") or 0)
            merged: dict[str, Any] = {"completion_tokens": completion, "prompt_tokens": prompt,
                                      "total_tokens": prompt + completion}
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                merged["prompt_tokens_details"] = {"cached_tokens": min(details["cached_tokens"], prompt)}
            out["usage"] = merged
        timings = chunk.get("timings")
        if isinstance(timings, dict):
            out["timings"] = self._timings(timings)
        return out

    def _timings(self, timings: dict[str, Any]) -> dict[str, Any]:
        """The continuation's timings, counted for the whole answer: its ``predicted_n`` plus
        the tokens sent before, its prompt (``prompt_n + cache_n``) less them, taken from the
        cached part first (they were the continuation's prompt, not the client's)."""
        out = dict(timings)
        before = self._before
        if isinstance(out.get("predicted_n"), int):
            out["predicted_n"] += before
        cache_n, prompt_n = out.get("cache_n"), out.get("prompt_n")
        if isinstance(cache_n, int) and isinstance(prompt_n, int):
            from_cache = min(cache_n, before)
            out["cache_n"], out["prompt_n"] = cache_n - from_cache, max(prompt_n - (before - from_cache), 0)
        return out
