"""The request log behind GET /sim/events (a test hook, not llama-server API).

Each model-bearing request gets one dict, created when it arrives and updated in place
as it goes (instance, slot, first byte, end, outcome), so a test holding the list sees
requests that are still running. "body" is the request's parsed JSON, as it arrived. The log keeps the newest `maxlen` entries.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

OUTCOMES: tuple[str, ...] = ("completed", "client_closed", "fault", "error")


class EventLog:
    """A bounded list of request records; `items` is the live list itself."""

    def __init__(self, maxlen: int = 10000) -> None:
        self.maxlen = maxlen
        self.items: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def open(self, path: str) -> dict[str, Any]:
        """Start the record of a request that has just arrived."""
        event: dict[str, Any] = {
            "id": next(self._ids),
            "path": path,
            "model": None,
            "instance": None,
            "slot": None,
            "stream": False,
            "prompt_n": None,
            "cache_n": None,
            "completion_tokens": 0,
            "status": None,
            "started": time.monotonic(),
            "first_byte": None,
            "ended": None,
            "outcome": None,
            "body": None,
        }
        self.items.append(event)
        if len(self.items) > self.maxlen:
            del self.items[: len(self.items) - self.maxlen]
        return event

    def clear(self) -> None:
        """Forget every record (in place, so holders of `items` see it empty)."""
        self.items.clear()


def mark_first_byte(event: dict[str, Any]) -> None:
    """Note when the response's first byte left, once."""
    if event["first_byte"] is None:
        event["first_byte"] = time.monotonic()


def close_event(event: dict[str, Any], outcome: str, status: int | None = None) -> None:
    """Finish a record with its outcome; the first outcome given wins."""
    if event["outcome"] is None:
        event["outcome"] = outcome
        event["ended"] = time.monotonic()
    if status is not None and event["status"] is None:
        event["status"] = status
