"""A bounded wait queue for requests that find every eligible backend full.

Fair across client identities (round-robin), FIFO within one. A request holds a ticket for
as long as it waits; a ticket keeps its place when a wake-up turns out to be too late, and
leaves the queue however the waiting ends (placed, deadline, client gone).
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Any


class QueueFull(Exception):
    """The queue already holds ``max_size`` tickets."""


class Ticket:
    __slots__ = ("identity", "model", "servers", "enqueued", "fingerprint", "_event", "_queue")

    def __init__(self, queue: "WaitQueue", identity: str, model: str, enqueued: float,
                 servers: tuple[str, ...] = (), fingerprint: Any = None) -> None:
        self.identity = identity
        self.model = model
        self.servers = servers  # where it may go: it waits for any of them
        self.enqueued = enqueued
        self.fingerprint = fingerprint  # the request's prompt (core.prefix.Fingerprint), if any
        self._event = asyncio.Event()
        self._queue = queue

    async def wait_turn(self, timeout: float) -> bool:
        """Wait for a wake-up (capacity may have freed); False when ``timeout`` passed."""
        self._event.clear()
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def wake(self) -> None:
        self._event.set()

    async def __aenter__(self) -> "Ticket":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._queue._remove(self)


class WaitQueue:
    def __init__(self, max_size: int, clock_monotonic: Any) -> None:
        self.max_size = max_size
        self._now = clock_monotonic
        self._by_identity: OrderedDict[str, deque[Ticket]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def ticket(self, identity: str, model: str, servers: tuple[str, ...] = (), fingerprint: Any = None) -> Ticket:
        """A place in the queue (use as ``async with``), or QueueFull."""
        if self._size >= self.max_size:
            raise QueueFull(f"the wait queue is full ({self.max_size} requests)")
        ticket = Ticket(self, identity, model, self._now(), servers, fingerprint)
        self._by_identity.setdefault(identity, deque()).append(ticket)
        self._size += 1
        return ticket

    def fair_order(self) -> list[Ticket]:
        """Round-robin over identities (oldest identity first), FIFO within each."""
        lanes = [list(lane) for lane in self._by_identity.values()]
        order: list[Ticket] = []
        depth = 0
        while len(order) < self._size:
            order.extend(lane[depth] for lane in lanes if depth < len(lane))
            depth += 1
        return order

    def waiting(self, model: str) -> list[Ticket]:
        """The tickets waiting for ``model``, in fair order."""
        return [ticket for ticket in self.fair_order() if ticket.model == model]

    def wake_all(self) -> None:
        """Capacity changed: every waiter re-checks, in fair order (the loop runs them FIFO)."""
        if not self._size:
            return
        for ticket in self.fair_order():
            ticket.wake()

    def snapshot(self) -> dict[str, Any]:
        now = self._now()
        waiting: dict[str, int] = {}
        by_server: dict[str, int] = {}
        oldest = 0.0
        for lane in self._by_identity.values():
            for ticket in lane:
                waiting[ticket.model] = waiting.get(ticket.model, 0) + 1
                for server in ticket.servers:
                    by_server[server] = by_server.get(server, 0) + 1
                oldest = max(oldest, now - ticket.enqueued)
        return {"length": self._size, "max": self.max_size, "waiting_by_model": waiting,
                "waiting_by_server": by_server, "identities": len(self._by_identity),
                "oldest_wait_s": round(oldest, 3)}

    def _remove(self, ticket: Ticket) -> None:
        lane = self._by_identity.get(ticket.identity)
        if lane is None or ticket not in lane:
            return
        lane.remove(ticket)
        self._size -= 1
        if not lane:
            del self._by_identity[ticket.identity]
        else:
            self._by_identity.move_to_end(ticket.identity)  # its turn is over: others first
