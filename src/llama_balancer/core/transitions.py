"""Which changes of a backend's health an operator is told about: pure, state in, changes out.

A backend's condition is its polled status (idle / busy / invalid, judged over the health
window), whether a failed request made it suspect, and whether its circuit is open. Only
changes that alter where requests may go are reported — to and from invalid, suspect set
and cleared, circuit opened and closed — never the idle <-> busy flips of normal work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Change = Literal["down", "up", "suspect", "cleared", "circuit_open", "circuit_closed"]
WORSE: frozenset[Change] = frozenset({"down", "suspect", "circuit_open"})  # logged as warnings


@dataclass(frozen=True)
class Condition:
    status: str  # "idle" | "busy" | "invalid", from polls
    suspect: bool = False
    circuit_open: bool = False

    @property
    def health(self) -> str:
        """What routing sees (as ``BackendState.health``): an open circuit is invalid."""
        if self.circuit_open:
            return "invalid"
        return "suspect" if self.suspect and self.status != "invalid" else self.status


def changes(before: Condition | None, after: Condition) -> list[Change]:
    """The meaningful changes from ``before`` (None: nothing observed yet) to ``after``.
    A first observation reports only what is wrong (a backend down from the start)."""
    out: list[Change] = []
    was = before or Condition("busy")
    if after.circuit_open != was.circuit_open:
        out.append("circuit_open" if after.circuit_open else "circuit_closed")
    if (after.status == "invalid") != (was.status == "invalid"):
        out.append("down" if after.status == "invalid" else "up")
    if after.suspect != was.suspect and not after.circuit_open and after.status != "invalid":
        out.append("suspect" if after.suspect else "cleared")
    return out
