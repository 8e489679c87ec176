"""Replicas that act as one: the pure parts of shared state (no sockets, no clock).

Several balancers share ``request-max`` through leases in Redis (io/shared_state.py). What
needs no Redis lives here, so it is tested with plain data:

- ``replica_limit``: the ``request-max`` one replica applies. Shared: the whole limit, counted
  over every replica's leases. Degraded (Redis unreachable): ``ceil(request_max / live)``
  counted over its own requests alone, with ``live`` the last known number of replicas, so
  that a lost Redis never lets each replica admit the whole limit (LiteLLM #35533).
- ``reserve_target``: how many places a replica may hold unused in Redis (its reserve), so
  that far from the limit a request is admitted without a round trip, exactly still.
- ``Link``: the shared/degraded state machine; it says when a transition happens, so the
  caller logs one line on entry and one on exit.
- The records replicas exchange for sticky bindings, prefix/slot affinity and passive
  health: one line each, ``<kind letter><json>``, bounded in size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Mode = Literal["shared", "degraded"]
SHARED_BLOCKS = 128  # fingerprint blocks shared per record: bounds message and table sizes


def replica_limit(request_max: int | None, live: int | None) -> int | None:
    """The limit this replica applies: ``request_max`` as is while shared (``live`` None),
    else its share of it, rounded up (never 0: a replica must be able to serve)."""
    if request_max is None or live is None:
        return request_max
    return max(math.ceil(request_max / max(live, 1)), 1)


def reserve_target(request_max: int, remote: int, in_use: int, live: int, most: int) -> int:
    """Places this replica may keep leased but unused on a server (its reserve): at most
    ``most``, and at most a quarter of the room left, shared out over the live replicas.

    A reserved place is a lease like any other, so the limit stays exact: every replica's
    leases, used or not, count in Redis. The reserve only moves the round trip off the
    request's path (a request takes a reserved lease at once; its release refills the
    reserve instead of going to Redis). Near the limit the room, and with it the reserve,
    goes to 0: every admission asks Redis, as it must where each place matters (``request-max``
    2 over 3 replicas never reserves anything)."""
    room = request_max - remote - in_use
    return max(0, min(most, room // (4 * max(live, 1))))


@dataclass
class Link:
    """Whether Redis answers: ``shared`` after a good round, ``degraded`` after a failure.

    Starts degraded (nothing known yet) with ``live`` the replicas assumed until Redis tells.
    ``fail`` and ``ok`` return True when the mode changed (the caller logs that once).
    """

    live: int = 1
    mode: Mode = "degraded"
    since: float = 0.0  # monotonic time of the last change
    reason: str = "not connected yet"
    transitions: int = 0
    ever_shared: bool = False

    def fail(self, now: float, reason: str) -> bool:
        if self.mode == "degraded":
            if not self.ever_shared:
                self.reason = reason
            return False
        self.mode, self.since, self.reason = "degraded", now, reason
        self.transitions += 1
        return True

    def ok(self, now: float, live: int) -> bool:
        self.live = max(live, 1)
        if self.mode == "shared":
            return False
        self.mode, self.since, self.reason = "shared", now, ""
        self.transitions += 1
        self.ever_shared = True
        return True

    @property
    def degraded_live(self) -> int | None:
        """``live`` for ``replica_limit`` while degraded, else None."""
        return self.live if self.mode == "degraded" else None


# --- records exchanged between replicas ----------------------------------------------------

STICKY, AFFINITY, HEALTH, PIN = "s", "a", "h", "p"  # PIN: sent to replicas, never stored


@dataclass(frozen=True)
class Record:
    """One change to share: ``kind`` (a letter above), its table ``field`` and JSON ``data``."""

    kind: str
    field: str
    data: dict[str, Any]


def sticky_record(identity: str, ip: str, model: str, server: str, instance: str, wall: float) -> Record:
    return Record(STICKY, f"{identity}|{model}",
                  {"i": identity, "ip": ip, "m": model, "s": server, "n": instance, "w": wall})


def affinity_record(server: str, instance: str, slot: int | None, hashes: tuple[int, ...],
                    lengths: tuple[int, ...]) -> Record | None:
    """A prompt sent to server x instance (and slot). Keyed by slot where pinned (a slot
    holds one prompt: the newest replaces it), else by the prompt's longest hash."""
    if not hashes:
        return None
    hashes, lengths = hashes[:SHARED_BLOCKS], lengths[:SHARED_BLOCKS]
    where = f"{server}|{instance}|" + (f"slot{slot}" if slot is not None else f"h{hashes[-1]}")
    return Record(AFFINITY, where, {"s": server, "n": instance, "slot": slot, "h": list(hashes), "l": list(lengths)})


def health_record(server: str, suspect: bool, open_until_wall: float | None, wall: float) -> Record:
    return Record(HEALTH, server, {"s": server, "suspect": suspect, "open": open_until_wall, "w": wall})


def pin_record(server: str, slot: int, change: int) -> Record:
    """A request of ours pinned to a slot (+1) or let go of it (-1)."""
    return Record(PIN, f"{server}|{slot}", {"s": server, "slot": slot, "c": change})


def encode_record(record: Record) -> bytes:
    """``<kind><json>``: one line (orjson escapes newlines inside strings)."""
    return record.kind.encode() + orjson.dumps(record.data)


def encode_batch(sender: str, lines: list[bytes]) -> bytes:
    """A message for the other replicas: the sender's id, then one record per line."""
    return b"\n".join([sender.encode(), *lines])


def batch_sender(message: bytes) -> str:
    """Who sent a batch (cheap: replicas skip their own without decoding the rest)."""
    return message.split(b"\n", 1)[0].decode(errors="replace")


def decode_batch(message: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The (kind, data) records of a batch; malformed lines are skipped."""
    return [found for line in message.split(b"\n")[1:] if (found := decode_record(line)) is not None]


def decode_record(line: bytes) -> tuple[str, dict[str, Any]] | None:
    if len(line) < 2:
        return None
    try:
        data = orjson.loads(line[1:])
    except orjson.JSONDecodeError:
        return None
    kind = chr(line[0])
    return (kind, data) if isinstance(data, dict) and kind in (STICKY, AFFINITY, HEALTH, PIN) else None
