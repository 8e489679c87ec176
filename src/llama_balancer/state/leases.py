"""Places held in a limit shared by several replicas: leases, and the book of ours.

A lease is one request's place on a server with ``request-max`` while limits are shared
(io/shared_state.py grants it in Redis). It is given back exactly once, by the in-flight slot
that holds it (``InflightSlot``), so every exit path returns it; a replica that dies returns
nothing, and its leases expire instead. The book is what this replica holds, for the batched
renewal, and what it gave back, for the batched release.

Far from a server's limit the book also keeps a reserve (``spare``): leases granted in Redis
that no request uses yet. A request takes one without a round trip, and a lease given back
goes to the reserve while it is below its target (``core.replicas.reserve_target``) instead
of to Redis. Spare leases are renewed with the others, so they count in Redis like any.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from .backend import BackendState

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
        self.spare: dict[str, list[str]] = {}  # leased in Redis, used by no request yet
        self.spare_target: dict[str, int] = {}  # how many spares each server's reserve keeps
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
            if len(self.spare.get(lease.server, ())) < self.spare_target.get(lease.server, 0):
                self.spare.setdefault(lease.server, []).append(lease.id)  # for the next request: no round trip
            else:
                self.forget(lease.server, lease.id)

    def take_spare(self, server: str) -> Lease | None:
        """A reserved lease for a request, or None when the reserve is empty."""
        spare = self.spare.get(server)
        if not spare:
            return None
        return self.grant(server, spare.pop())

    def add_spare(self, server: str, ids: list[str]) -> None:
        self.spare.setdefault(server, []).extend(ids)

    def trim_spare(self, server: str, target: int) -> None:
        """Set the reserve's target; spares above it go back to Redis."""
        self.spare_target[server] = target
        spare = self.spare.get(server)
        while spare is not None and len(spare) > target:
            self.forget(server, spare.pop())

    def drop_spares(self) -> None:
        """Give every spare back (Redis went away or restarted: they may no longer be counted
        there, and must not be re-created as if requests held them)."""
        for server in list(self.spare):
            self.trim_spare(server, 0)
        self.spare_target.clear()

    def missing_spares(self, server: str) -> int:
        return max(self.spare_target.get(server, 0) - len(self.spare.get(server, ())), 0)

    def forget(self, server: str, lease_id: str) -> None:
        """Delete a lease in Redis at the next release batch: one given back, or one whose
        grant may have happened although its answer was lost (a timeout, a cancel)."""
        self.released.append((server, lease_id))
        if self.on_release is not None:
            self.on_release()

    def count(self, server: str) -> int:
        """Our leases on ``server`` in Redis: used and spare."""
        held = self.held.get(server)
        return (len(held) if held else 0) + len(self.spare.get(server, ()))

    def in_use(self, server: str) -> int:
        held = self.held.get(server)
        return len(held) if held else 0

    def ids(self, server: str) -> list[str]:
        return list(self.held.get(server, ())) + self.spare.get(server, [])

    def total(self) -> int:
        return sum(len(held) for held in self.held.values())

    def spares(self) -> int:
        return sum(len(spare) for spare in self.spare.values())

    def take_released(self, most: int) -> list[tuple[str, str]]:
        out = []
        while self.released and len(out) < most:
            out.append(self.released.popleft())
        return out
