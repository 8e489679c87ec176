"""How each completion endpoint writes its answer: one body, or a stream of framed events.

A ``Format`` turns a finished run into its whole body, and a running one into the stream's
pieces: what goes before the first token, what each token adds, and what closes the stream
(terminator included). The writers in ``completions`` know nothing of any API's shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from . import anthropic, ollama, responses
from .dialects import MESSAGES, OLLAMA_CHAT, OLLAMA_GENERATE, RESPONSES
from .engine import Run
from .generate import closing_events, full_body, opening_events, sse, terminator, token_event

EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class Format:
    content_type: str  # of a stream
    full: Callable[[Run], bytes]
    opening: Callable[[Run], list[bytes]]
    token: Callable[[Run, str], list[bytes]]
    closing: Callable[[Run], list[bytes]]


def _closing(run: Run) -> list[bytes]:
    end = terminator(run)
    return [sse(event) for event in closing_events(run)] + ([end] if end else [])


LLAMA = Format(EVENT_STREAM, lambda run: orjson.dumps(full_body(run)),
               lambda run: [sse(event) for event in opening_events(run)],
               lambda run, piece: [sse(token_event(run, piece))], _closing)
ANTHROPIC = Format(EVENT_STREAM, anthropic.full, anthropic.opening, anthropic.token, anthropic.closing)
RESPONSES_API = Format(EVENT_STREAM, responses.full, responses.opening, responses.token, responses.closing)
OLLAMA = Format(ollama.NDJSON, ollama.full, ollama.opening, ollama.token, ollama.closing)

_BY_KIND = {MESSAGES: ANTHROPIC, RESPONSES: RESPONSES_API, OLLAMA_CHAT: OLLAMA, OLLAMA_GENERATE: OLLAMA}


def format_for(kind: str) -> Format:
    """The format of an endpoint kind (chat, text and native completions: llama-server's own)."""
    return _BY_KIND.get(kind, LLAMA)
