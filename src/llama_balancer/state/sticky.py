"""Sticky bindings: (identity x requested model) -> server and instance, for a TTL.

Only one identity holds a given server x instance: binding a new one drops the old entry.
Keyed by the model as requested (the old tool keyed by the rewritten instance and lost
bindings whenever ``model-2`` was chosen). Where replicas share state, every change goes to
``on_change`` (written behind the request) and other replicas' changes come in by ``merge``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..core.routing import StickyBinding
from .clock import Clock, iso_utc


# A refresh at a request's end is shared only when the binding was last shared this share
# of the TTL ago: a binding made when the answer began need not be sent again at its end.
REFRESH_SHARE_FRACTION = 0.05


@dataclass
class StickyEntry:
    identity: str
    ip: str
    model: str
    server: str
    instance: str
    updated_mono: float
    updated_wall: float


class StickyStore:
    def __init__(self, ttl_s: float, clock: Clock) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._by_key: dict[tuple[str, str], StickyEntry] = {}
        self._by_target: dict[tuple[str, str], tuple[str, str]] = {}
        self.on_change: Callable[[StickyEntry], None] | None = None

    def get(self, identity: str, model: str) -> StickyBinding | None:
        entry = self._live((identity, model))
        return None if entry is None else StickyBinding(entry.server, entry.instance, entry.updated_mono)

    def target(self, identity: str, model: str) -> tuple[str, str] | None:
        """``get``'s (server, instance) alone, without building the binding."""
        entry = self._live((identity, model))
        return None if entry is None else (entry.server, entry.instance)

    def _live(self, key: tuple[str, str]) -> StickyEntry | None:
        """The entry under ``key``, unless it expired (then it is dropped)."""
        entry = self._by_key.get(key)
        if entry is None:
            return None
        if self._clock.monotonic() - entry.updated_mono > self.ttl_s:
            self._drop(key)
            return None
        return entry

    def bind(self, identity: str, ip: str, model: str, server: str, instance: str) -> None:
        """Bind or refresh; takes the server x instance away from any other identity."""
        entry = self._put(identity, ip, model, server, instance, self._clock.monotonic(), self._clock.wall())
        if self.on_change is not None:
            self.on_change(entry)

    def merge(self, identity: str, ip: str, model: str, server: str, instance: str, updated_wall: float) -> bool:
        """Another replica's binding: taken when newer than ours (last writer wins), with the
        same rule as ``bind`` (one identity per server x instance). False when ignored."""
        now_wall = self._clock.wall()
        age = max(now_wall - updated_wall, 0.0)
        if age > self.ttl_s:
            return False
        current = self._by_key.get((identity, model))
        if current is not None and current.updated_wall >= updated_wall:
            return False
        holder = self._by_target.get((server, instance))
        if holder is not None and holder != (identity, model):
            held = self._by_key.get(holder)
            if held is not None and held.updated_wall > updated_wall:
                return False  # a newer binding holds that target
        self._put(identity, ip, model, server, instance, self._clock.monotonic() - age, updated_wall)
        return True

    def _put(self, identity: str, ip: str, model: str, server: str, instance: str, mono: float,
             wall: float) -> StickyEntry:
        key = (identity, model)
        target = (server, instance)
        holder = self._by_target.get(target)
        if holder is not None and holder != key:
            self._drop(holder)
        old = self._by_key.get(key)
        if old is not None and old.server == server and old.instance == instance:
            # Rebinding where it already points: refresh the entry in place.
            old.ip = ip
            old.updated_mono = mono
            old.updated_wall = wall
            entry = old
        else:
            if old is not None:
                self._by_target.pop((old.server, old.instance), None)
            entry = self._by_key[key] = StickyEntry(identity, ip, model, server, instance, mono, wall)
        self._by_target[target] = key
        return entry

    def refresh(self, identity: str, model: str, server: str, instance: str) -> None:
        """Refresh at request end, only if the binding still points where the request went."""
        entry = self._by_key.get((identity, model))
        if entry is not None and entry.server == server and entry.instance == instance:
            now = self._clock.monotonic()
            shared_long_ago = now - entry.updated_mono >= self.ttl_s * REFRESH_SHARE_FRACTION
            entry.updated_mono = now
            entry.updated_wall = self._clock.wall()
            if shared_long_ago and self.on_change is not None:
                self.on_change(entry)

    def entries(self) -> list[dict[str, Any]]:
        """Live bindings for the snapshot; expired ones are dropped on the way."""
        now = self._clock.monotonic()
        for key in [k for k, e in self._by_key.items() if now - e.updated_mono > self.ttl_s]:
            self._drop(key)
        return [
            # The old tool's keys: "key" is "<identity>|<model>" and "ip" the identity (a
            # user name or an IP); the client's address itself is our "client_ip".
            {"key": f"{e.identity}|{e.model}", "ip": e.identity, "model": e.model, "backend": e.server,
             "instance": e.instance, "client_ip": e.ip, "updated_at": iso_utc(e.updated_wall)}
            for e in self._by_key.values()
        ]

    def __len__(self) -> int:
        return len(self._by_key)

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._by_key.pop(key, None)
        if entry is not None and self._by_target.get((entry.server, entry.instance)) == key:
            del self._by_target[(entry.server, entry.instance)]
