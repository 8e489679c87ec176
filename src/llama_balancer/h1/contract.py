"""The exchange machine's vocabulary: its states, timers and attempt outcomes, what the
routing layer hands it for an attempt, and the ``Effects`` it asks of its adapter.

Shared by the machine (``exchange.py``), its one asyncio adapter
(``http/front_connection.py``) and the playbook tests, so none of them needs the others'
internals.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Protocol

from ..core.errors import BalancerError, UpstreamError
from ..core.usage import UsageTail
from .relay import EventRelay
from .requests import RequestHead


class State(enum.Enum):
    IDLE = "idle"
    RECEIVING = "receiving"
    ROUTING = "routing"
    SENT = "sent"
    RELAYING = "relaying"
    ANSWERED = "answered"
    CLOSED = "closed"
    HANDED_OFF = "handed_off"


class Timer(enum.Enum):
    IDLE = "idle"  # keep-alive: no request for client_idle_timeout_s
    HEAD = "head"  # the request (head, then body) within client_header_timeout_s of its first byte
    UPSTREAM = "upstream"  # no byte from the backend for upstream_idle_timeout_s

    # Keys of the adapter's deadlines, set and cleared on every request: members are
    # singletons, so identity is their hash (C) instead of Enum's own (Python, by name).
    __hash__ = object.__hash__


class Outcome(enum.Enum):
    """How an attempt on one backend ended (``Effects.attempt_over``)."""

    ANSWERED = "answered"  # its head went to the client (relaying goes on)
    DONE = "done"  # its answer ended cleanly
    RETRY = "retry"  # a retryable status before anything reached the client
    FAILED = "failed"  # it failed before anything reached the client
    BROKEN = "broken"  # it failed after its head went to the client (the client is cut off)
    CLIENT_GONE = "client_gone"  # the client went away


@dataclass(frozen=True, slots=True)
class Limits:
    """Read when a request starts, so a reload applies to the next request."""

    max_body_bytes: int
    header_timeout_s: float
    idle_timeout_s: float
    max_field_bytes: int = 8190  # a request line's target or one header field
    max_headers: int = 128
    read_ahead: int = 1 << 20  # bytes buffered past the request being served before reading pauses


@dataclass(slots=True)
class Attempt:
    """One try on one backend, as the routing layer starts it."""

    request: bytes  # the request to send, framed
    accept: Callable[[int], bool]  # the routing layer's word on an answer's status: False, retry elsewhere
    request_id: str
    idle_timeout_s: float | None
    extra_lines: tuple[str, ...] = ()  # header lines of ours for the client's head (CORS)
    drop_header: Callable[[str], bool] | None = None  # backend header lines ours replace
    tail: UsageTail | None = None
    relay: EventRelay | None = None  # a stream that may be resumed: relayed event by event
    # A plain (not streamed) answer of at most this many bytes is read whole before its head
    # goes to the client, so a backend that breaks off mid-body is retried elsewhere, whole.
    hold_bytes: int = 0



@dataclass(slots=True)
class AttemptReport:
    """What the attempt learnt, for the exchange's record."""

    status: int | None = None
    streamed: bool = False
    first_byte: float | None = None  # time of the first body byte relayed
    error: UpstreamError | None = None
    kind: str = ""  # RETRY: "http_<status>"; FAILED/BROKEN: the UpstreamError's kind
    got_bytes: bool = False  # the backend sent anything (a reused connection that sent nothing was stale)
    reusable: bool = False
    keepalive_s: float | None = None  # the backend's Keep-Alive timeout
    resumable: bool = False  # BROKEN: the client has whole events only, another server may continue


class Effects(Protocol):
    """What the machine asks of the world; one asyncio adapter does it."""

    def write(self, data: bytes) -> None: ...
    def close(self, abort: bool) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def set_timer(self, timer: Timer, seconds: float) -> None: ...
    def cancel_timer(self, timer: Timer) -> None: ...
    def serve(self, head: RequestHead, body: bytes, refusal: BalancerError | None) -> None: ...
    def refused(self, error: BalancerError) -> None: ...
    def hand_off(self, raw: bytes) -> None: ...
    def send_upstream(self, data: bytes) -> None: ...
    def pause_upstream(self) -> None: ...
    def resume_upstream(self) -> None: ...
    def release_upstream(self, reuse: bool, keepalive_s: float | None) -> None: ...
    def attempt_over(self, outcome: Outcome, report: AttemptReport) -> None: ...


class _NoEffects:
    """Effects that do nothing, for a machine its adapter let go of (``ExchangeMachine.release``)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _nothing


def _nothing(*args: object) -> None:
    return None


NO_EFFECTS: Effects = _NoEffects()  # type: ignore[assignment]
