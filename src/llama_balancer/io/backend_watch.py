"""The log lines of a backend's health changes, with their reason (``core.transitions``).

Told after every poll and after every failed request; it compares the backend's condition
with the last one it reported, and writes one line per meaningful change:

    ts=... level=warning event=backend_state server=PC1 change=down from=idle to=invalid reason="..."

A circuit that closes because ``circuit_open_s`` passed is seen at the next poll.
"""
from __future__ import annotations

import logging

from ..core.transitions import WORSE, Condition, changes
from ..state.backend import BackendState
from ..state.clock import Clock
from .oplog import event

log = logging.getLogger("llama_balancer.backends")

_SAID = {
    "down": "{name} is down (invalid): {reason}",
    "up": "{name} answers again ({to})",
    "suspect": "{name} is suspect after a failed request: {reason}",
    "cleared": "{name} is no longer suspect: a poll answered",
    "circuit_open": "{name}: circuit open after failed requests in a row (none go there for circuit_open_s); "
                    "last: {reason}",
    "circuit_closed": "{name}: circuit closed: requests may go there again",
}


class BackendWatch:
    """Remembers what was last reported per server (a reload forgets removed ones)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._reported: dict[str, Condition] = {}

    def observe(self, state: BackendState, reason: str | None = None, warning: str | None = None) -> None:
        """Compare ``state`` with what was last reported; ``reason`` explains a failure (a
        request's error), else the latest poll's detail is used. ``warning`` (a poller's,
        with its hint) is written once: as the message of a "down" line when the backend
        goes down with it, else as a line of its own."""
        now = self._clock.monotonic()
        circuit = state.open_until is not None and now < state.open_until
        after = Condition(state.status, state.suspect, circuit)
        before = self._reported.get(state.name)
        found = changes(before, after) if before != after else []
        self._reported[state.name] = after
        if warning is not None and "down" not in found:
            log.warning("%s", warning, extra=event("backend_warning", server=state.name))
        for change in found:
            why = reason if change in ("suspect", "circuit_open") else None
            if change == "down":
                why = _poll_detail(state)
            text = _SAID[change].format(name=state.name, reason=why or "no detail", to=after.health)
            if change == "down" and warning is not None:
                text = warning
            level = logging.WARNING if change in WORSE else logging.INFO
            log.log(level, "%s", text, extra=event(
                "backend_state", server=state.name, change=change,
                **{"from": before.health if before else None}, to=after.health, reason=why))

    def forget(self, keep: set[str]) -> None:
        for name in [name for name in self._reported if name not in keep]:
            del self._reported[name]


def _poll_detail(state: BackendState) -> str | None:
    for sample in reversed(state.samples):
        if sample.status == "invalid":
            return sample.detail or "the poll failed"
    return None
