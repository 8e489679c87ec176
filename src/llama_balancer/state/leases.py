"""Places held in a limit shared by several replicas: leases, and the book of ours.

A lease is one request's place on a server with ``request-max`` while limits are shared
(io/shared_state.py grants it in Redis). It is given back exactly once, by the in-flight slot
that holds it (``InflightSlot``), so every exit path returns it; a replica that dies returns
nothing, and its leases expire instead. The book is what this replica holds, for the batched
renewal, and what it gave back, for the batched release.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from .registry import BackendState

RELEASES_KEPT = 4096  # releases waiting for Redis (older ones have expired there anyway)


class Lease:
    """One place on ``server``; ``release`` is idempotent."""

    __slots__ = ("server", "id", "_book")

    def __init__(self, server: str, lease_id: str, book: "LeaseBook | None") -> None:
        self.server = server
        self.id = lease_id
        self._book = book

    def release(self) -> None:
        book, self._book = self._book, None
        if book is not None:
            book.drop(self)


class Admission(Protocol):
    """Grants places under a shared limit (the Redis adapter); None = refused (full)."""

    async def admit(self, state: "BackendState") -> Lease | None: ...


class LeaseBook:
    """The leases this replica holds, per server, and the releases not yet sent."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._count = 0
        self.held: dict[str, dict[str, Lease]] = {}
        self.released: deque[tuple[str, str]] = deque(maxlen=RELEASES_KEPT)
        self.on_release: Callable[[], None] | None = None  # wakes the batched release

    def next_id(self) -> str:
        self._count += 1
        return f"{self._prefix}:{self._count}"

    def grant(self, server: str, lease_id: str) -> Lease:
        lease = Lease(server, lease_id, self)
        self.held.setdefault(server, {})[lease_id] = lease
        return lease

    def drop(self, lease: Lease) -> None:
        held = self.held.get(lease.server)
        if held is not None and held.pop(lease.id, None) is not None:
            if not held:
                del self.held[lease.server]
            self.forget(lease.server, lease.id)

    def forget(self, server: str, lease_id: str) -> None:
        """Delete a lease in Redis at the next release batch: one given back, or one whose
        grant may have happened although its answer was lost (a timeout, a cancel)."""
        self.released.append((server, lease_id))
        if self.on_release is not None:
            self.on_release()

    def count(self, server: str) -> int:
        held = self.held.get(server)
        return len(held) if held else 0

    def ids(self, server: str) -> list[str]:
        return list(self.held.get(server, ()))

    def total(self) -> int:
        return sum(len(held) for held in self.held.values())

    def take_released(self, most: int) -> list[tuple[str, str]]:
        out = []
        while self.released and len(out) < most:
            out.append(self.released.popleft())
        return out
