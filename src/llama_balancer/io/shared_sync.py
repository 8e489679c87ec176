"""Sticky bindings, prefix/slot affinity and passive health, shared between replicas.

Reads never leave the process: routing reads the local stores, which other replicas'
changes keep fresh (pub/sub batches, and a load from Redis at every (re)connection). Writes
are queued by the stores' hooks on the request's path (a dict write, no I/O) and sent
behind it in batches: one Lua call stores them (bounded tables with TTLs) and tells the
other replicas. While Redis is away the queue keeps the newest change per key (bounded)
and sends it on return, so replicas converge.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Any, Awaitable, Callable

from ..core.prefix import Fingerprint
from ..core.replicas import (AFFINITY, HEALTH, PIN, STICKY, Record, affinity_record, decode_batch, decode_record,
                             encode_batch, encode_record, health_record, pin_record, sticky_record)
from ..state.affinity import AffinityStore
from ..state.backend import BackendState
from ..state.clock import Clock
from ..state.registry import Registry
from ..state.sticky import StickyEntry, StickyStore
from .shared_scripts import Keys

log = logging.getLogger("llama_balancer.shared")

OUTBOX_MAX = 8192  # changes waiting to be sent (the oldest go first when Redis stays away)
BATCH = 256  # records per Lua call
LOAD_PAGE = 256
HEALTH_ENTRIES = 1024
HEALTH_GRACE_S = 5.0  # a suspect mark is shared this long (a good poll clears it anyway)
TABLES = {STICKY: "sticky", AFFINITY: "affinity", HEALTH: "health"}

Call = Callable[[str, list[str], list[Any]], Awaitable[Any]]  # (script, keys, args) -> reply


class SoftSync:
    """The outbox of local changes and the merge of remote ones."""

    def __init__(self, keys: Keys, replica_id: str, sticky: StickyStore, affinity: AffinityStore,
                 registry: Registry, clock: Clock, sticky_entries: int, affinity_entries: int,
                 affinity_ttl_s: float) -> None:
        self._keys = keys
        self._replica = replica_id
        self._sticky = sticky
        self._affinity = affinity
        self._registry = registry
        self._clock = clock
        self._limits = {STICKY: sticky_entries, AFFINITY: affinity_entries, HEALTH: HEALTH_ENTRIES}
        self._affinity_ttl_ms = int(affinity_ttl_s * 1000)
        # (kind, key) -> (a thunk giving the record, ttl ms): built at send time, off the path
        self.outbox: OrderedDict[tuple[Any, ...], tuple[Callable[[], Record | None], int]] = OrderedDict()
        # Pins of slots, in order (never coalesced: each +1 has its -1), sent, not stored.
        self.pins: deque[Record] = deque(maxlen=OUTBOX_MAX)
        # What other replicas pinned, per (sender, server, slot): undone if they go silent.
        self._remote_pins: dict[tuple[str, str, int], int] = {}
        self.on_queued: Callable[[], None] | None = None
        self.alone = True  # no other replica is live: pins would reach nobody
        self.applied = 0
        self.dropped = 0
        sticky.on_change = self._sticky_changed
        affinity.on_record = self._affinity_recorded
        registry.on_health = self._health_changed
        registry.on_pin = self._pin_changed

    def detach(self) -> None:
        self._sticky.on_change = None
        self._affinity.on_record = None
        self._registry.on_health = None
        self._registry.on_pin = None

    # --- hooks on the request's path: queue only ------------------------------------------

    def _sticky_changed(self, entry: StickyEntry) -> None:
        e = (entry.identity, entry.ip, entry.model, entry.server, entry.instance, entry.updated_wall)
        self._queue((STICKY, entry.identity, entry.model), lambda: sticky_record(*e),
                    int(self._sticky.ttl_s * 1000))

    def _affinity_recorded(self, server: str, instance: str, slot: int | None, fp: Fingerprint) -> None:
        where = slot if slot is not None else fp.hashes[-1]
        self._queue((AFFINITY, server, instance, slot is None, where),
                    lambda: affinity_record(server, instance, slot, fp.hashes, fp.lengths), self._affinity_ttl_ms)

    def _health_changed(self, state: BackendState) -> None:
        now, wall = self._clock.monotonic(), self._clock.wall()
        left = max(state.open_until - now, 0.0) if state.open_until is not None else 0.0
        open_wall = wall + left if left > 0 else None
        record = health_record(state.name, state.suspect, open_wall, wall)
        self._queue((HEALTH, state.name), lambda: record, int((left + HEALTH_GRACE_S) * 1000))

    def _pin_changed(self, state: BackendState, slot: int, pinned: bool) -> None:
        if self.alone:
            return
        self.pins.append(pin_record(state.name, slot, 1 if pinned else -1))
        if self.on_queued is not None:
            self.on_queued()

    def _queue(self, key: tuple[Any, ...], make: Callable[[], Record | None], ttl_ms: int) -> None:
        outbox = self.outbox
        outbox[key] = (make, max(ttl_ms, 1))
        outbox.move_to_end(key)
        if len(outbox) > OUTBOX_MAX:
            outbox.popitem(last=False)
            self.dropped += 1
        if self.on_queued is not None:
            self.on_queued()

    # --- sending ---------------------------------------------------------------------------

    async def flush(self, call: Call) -> int:
        """Send what is queued, a batch at a time; a failure puts the batch back (unless
        newer changes replaced it) and propagates. Returns the records sent."""
        sent = 0
        while self.outbox or self.pins:
            taken = []
            while self.outbox and len(taken) < BATCH:
                taken.append(self.outbox.popitem(last=False))
            pins = [self.pins.popleft() for _ in range(min(len(self.pins), BATCH))]
            try:
                await call("put", *self._put_args(taken, pins))
            except BaseException:
                for key, value in reversed(taken):
                    if key not in self.outbox:
                        self.outbox[key] = value
                        self.outbox.move_to_end(key, last=False)
                self.pins.extendleft(reversed(pins))
                raise
            sent += len(taken) + len(pins)
        return sent

    def _put_args(self, taken: list[tuple[tuple[Any, ...], tuple[Callable[[], Record | None], int]]],
                  pins: list[Record]) -> tuple[list[str], list[Any]]:
        by_kind: dict[str, list[tuple[str, bytes, int]]] = {}
        for _, (make, ttl_ms) in taken:
            record = make()
            if record is not None:
                by_kind.setdefault(record.kind, []).append((record.field, encode_record(record), ttl_ms))
        keys, args = [self._keys.replicas], [self._keys.state, b""]
        lines = []
        for kind, rows in by_kind.items():
            keys.extend(self._keys.table(TABLES[kind]))
            args.extend((self._limits[kind], len(rows)))
            for field, line, ttl_ms in rows:
                args.extend((field, line, ttl_ms))
                lines.append(line)
        lines.extend(encode_record(pin) for pin in pins)
        args[1] = encode_batch(self._replica, lines)
        return keys, args

    # --- receiving -------------------------------------------------------------------------

    def apply_message(self, message: bytes) -> None:
        """A batch from the state channel (our own were skipped by the caller)."""
        sender = message.split(b"\n", 1)[0].decode(errors="replace")
        for kind, data in decode_batch(message):
            if kind == PIN:
                self._apply_pin(sender, data)
            else:
                self._apply(kind, data)

    def _apply_pin(self, sender: str, data: dict[str, Any]) -> None:
        try:
            key = (sender, str(data["s"]), int(data["slot"]))
            change = 1 if int(data["c"]) > 0 else -1
        except (KeyError, TypeError, ValueError):
            return
        held = self._remote_pins.get(key, 0)
        if change < 0 and held <= 0:
            return  # its +1 was lost (we were away): nothing to undo
        self._remote_pins[key] = held + change
        if held + change <= 0:
            del self._remote_pins[key]
        self._registry.merge_pin(key[1], key[2], change)

    def forget_pins(self) -> None:
        """The link broke: the ends of other replicas' pins may never come; drop them all
        (polls show what is busy meanwhile)."""
        for (_, server, slot), held in self._remote_pins.items():
            self._registry.merge_pin(server, slot, -held)
        self._remote_pins.clear()

    async def load(self, call: Call) -> int:
        """Every live record in Redis, oldest first (a slot's newest prompt wins)."""
        loaded = 0
        for name in TABLES.values():
            offset = 0
            while offset < 1_000_000:
                values = await call("load", list(self._keys.table(name)), [offset, LOAD_PAGE])
                for line in values:
                    found = decode_record(line)
                    if found is not None:
                        self._apply(*found)
                loaded += len(values)
                if len(values) < LOAD_PAGE:
                    break
                offset += LOAD_PAGE
        return loaded

    def _apply(self, kind: str, data: dict[str, Any]) -> None:
        try:
            if kind == STICKY:
                self._sticky.merge(str(data["i"]), str(data["ip"]), str(data["m"]), str(data["s"]),
                                   str(data["n"]), float(data["w"]))
            elif kind == AFFINITY:
                server = str(data["s"])
                if self._registry.find(server) is None:
                    return
                fp = Fingerprint(tuple(int(h) for h in data["h"]), tuple(int(n) for n in data["l"]))
                slot = data.get("slot")
                self._affinity.record(server, str(data["n"]), None if slot is None else int(slot), fp, share=False)
            elif kind == HEALTH:
                self._apply_health(data)
            self.applied += 1
        except (KeyError, TypeError, ValueError) as exc:
            log.debug("shared record ignored (%s): %r", exc, data)

    def _apply_health(self, data: dict[str, Any]) -> None:
        now, wall = self._clock.monotonic(), self._clock.wall()
        if wall - float(data["w"]) > HEALTH_GRACE_S and not (data.get("open") and float(data["open"]) > wall):
            return  # old news
        opened = data.get("open")
        until = now + (float(opened) - wall) if opened is not None and float(opened) > wall else None
        self._registry.merge_health(str(data["s"]), bool(data.get("suspect")), until)
