"""What the routing layer and a data path say to each other: the request (``Call``), one
try on one backend (``Attempt``), and the failure that sends it elsewhere (``RetryElsewhere``).

A data path (the native front, aiohttp) parses the request, builds a ``Call`` and offers an
``Attempt``; the ``Router`` decides where each try goes and whether a failed one is tried
again. Nothing here knows a socket.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Generic, Protocol, TypeVar

from multidict import CIMultiDict, CIMultiDictProxy

from ..core.config import ServerConfig
from ..core.errors import UpstreamError
from ..state.exchange import Exchange

# OpenAI-style paths (Anthropic's /v1/messages too) and Ollama's native API must name a
# model; llama.cpp's native ones may omit it (-> fallback).
OLLAMA_PATHS = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings")
MODEL_REQUIRED = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/v1/messages", "/v1/rerank", "/v1/reranking", "/rerank", "/reranking", *OLLAMA_PATHS,
)
MODEL_OPTIONAL = ("/completion", "/completions", "/infill", "/embedding", "/embeddings")
ROUTED_PATHS = MODEL_REQUIRED + MODEL_OPTIONAL
# Endpoints that take llama-server's id_slot (pinning a slot whose cache holds the prompt).
# /v1/responses passes every field on to its chat completion; /v1/messages drops it.
SLOT_PINNABLE = frozenset({"/v1/chat/completions", "/v1/completions", "/completion", "/completions", "/infill",
                           "/v1/responses"})

R = TypeVar("R", covariant=True)


class ResumeElsewhere(Exception):
    """A stream broke after bytes reached the client, at an event boundary the client can be
    continued from: another backend may continue it (``core.resume``)."""

    def __init__(self, server: str, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.server, self.error = server, error


class RetryElsewhere(Exception):
    """A failure before any byte reached the client: another backend may take the request."""

    def __init__(self, server: str, kind: str, error: UpstreamError | None) -> None:
        super().__init__(kind)
        self.server, self.kind, self.error = server, kind, error

    @property
    def reason(self) -> str:
        """For the log: the error's message, or the status the backend answered."""
        if self.error is not None:
            return self.error.message
        return f"answered HTTP {self.kind.removeprefix('http_')}"


@dataclass(slots=True)
class Call:
    """A model-bearing request as the routing logic needs it, whoever parsed it."""

    method: str
    path: str
    path_qs: str
    headers: CIMultiDict[str] | CIMultiDictProxy[str]
    body: bytes
    payload: Any = None  # the body as JSON, once the router parsed it


class Answered(Protocol):
    """What an attempt asks once the backend's answer head is in, before relaying it: the
    one retry decision on an answer's status.

    ``accept(status)`` is False for a status retried elsewhere (unless this is the last try):
    the try ends, and once the attempt returns the router tries elsewhere. True accepts the
    answer: the success is recorded (circuit count reset, sticky binding made)."""

    def accept(self, status: int) -> bool: ...


class Attempt(Protocol, Generic[R]):
    """Send ``body`` to ``server`` and relay its answer to the client. Before relaying it asks
    ``answered.accept(status)``, and returns without relaying when that is False; an
    UpstreamError before the answer started propagates (the router turns it into a retry,
    or gives up on the last try)."""

    def __call__(self, server: ServerConfig, call: Call, headers: CIMultiDict[str], body: bytes, ex: Exchange,
                 last_try: bool, answered: Answered) -> Awaitable[R]: ...
