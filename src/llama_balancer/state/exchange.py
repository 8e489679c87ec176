"""One request's record as it passes through: filled in by the handler and the relay, then
handed once to metrics, the access log and the access stats."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.usage import Usage


@dataclass(slots=True)  # one per request: no instance dict to build
class Exchange:
    request_id: str
    endpoint: str
    endpoint_label: str  # the route's path, or "(proxy)": bounded for metrics
    started: float  # the runtime's Clock.monotonic (SystemClock: time.monotonic, as first_byte)
    ip: str
    identity: str = ""
    user: str | None = None
    model: str | None = None  # as the client asked
    model_label: str = "(none)"  # bounded-cardinality name for metrics
    server: str | None = None
    instance: str | None = None
    reason: str | None = None
    status: int | None = None
    queue_wait_s: float = 0.0
    first_byte: float | None = None  # time.monotonic() of the first body byte relayed (set by the data path)
    streamed: bool = False  # the answer was an event stream (TTFT means something only there)
    ended: float | None = None
    outcome: str = "completed"  # completed | client_closed | upstream_error | rejected
    retries: int = 0
    resumed_from: list[str] = field(default_factory=list)  # servers whose broken stream another continued
    usage: Usage | None = None
    prompt_chars: int = 0  # the routed prompt's length in chars (its fingerprint's), 0 if none
    tail: list[bytes] = field(default_factory=list)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_byte is None else self.first_byte - self.started

    @property
    def duration_s(self) -> float | None:
        return None if self.ended is None else self.ended - self.started
