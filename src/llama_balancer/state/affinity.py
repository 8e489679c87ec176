"""Which prompt prefixes were recently sent where: per server x instance, and per
llama-server slot where the balancer pinned one. Bounded LRUs of fingerprint hashes."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ..core.prefix import Fingerprint, longest_match


class _Lru:
    __slots__ = ("_items", "_cap")

    def __init__(self, capacity: int) -> None:
        self._items: OrderedDict[int, None] = OrderedDict()
        self._cap = capacity

    def add_all(self, hashes: tuple[int, ...]) -> None:
        items = self._items
        for value in hashes:
            items[value] = None
            items.move_to_end(value)
        while len(items) > self._cap:
            items.popitem(last=False)

    def __contains__(self, value: object) -> bool:
        return value in self._items

    def __len__(self) -> int:
        return len(self._items)


class AffinityStore:
    def __init__(self, entries_per_target: int) -> None:
        self.entries = entries_per_target
        self._targets: dict[tuple[str, str], _Lru] = {}
        self._slots: dict[tuple[str, int], _Lru] = {}
        self._slot_chars: dict[tuple[str, int], int] = {}  # chars of the prompt a slot holds

    def record(self, server: str, instance: str, slot: int | None, fp: Fingerprint) -> None:
        if not fp.hashes:
            return
        self._lru(self._targets, (server, instance)).add_all(fp.hashes)
        if slot is not None:
            # A llama-server slot keeps the KV cache of its last prompt only: this prompt
            # replaces whatever the slot was known to hold.
            lru = self._slots[(server, slot)] = _Lru(self.entries)
            lru.add_all(fp.hashes)
            self._slot_chars[(server, slot)] = fp.chars

    def match_chars(self, server: str, instance: str, fp: Fingerprint) -> int:
        lru = self._targets.get((server, instance))
        return 0 if lru is None else longest_match(fp, lru)[1]

    def slot_match(self, server: str, slots: tuple[int, ...], fp: Fingerprint) -> dict[int, int]:
        out = {}
        for slot in slots:
            lru = self._slots.get((server, slot))
            if lru is not None:
                out[slot] = longest_match(fp, lru)[1]
        return out

    def slot_cached(self, server: str, slots: tuple[int, ...]) -> dict[int, int]:
        """Chars of the prompt each slot was last given by us (slots we never pinned: absent)."""
        return {slot: self._slot_chars[(server, slot)] for slot in slots if (server, slot) in self._slot_chars}

    def forget_server(self, server: str) -> None:
        """A server's cache is gone (restart, removal): its entries mean nothing any more."""
        self._targets = {k: v for k, v in self._targets.items() if k[0] != server}
        self._slots = {k: v for k, v in self._slots.items() if k[0] != server}
        self._slot_chars = {k: v for k, v in self._slot_chars.items() if k[0] != server}

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"server": s, "instance": i, "entries": len(lru)} for (s, i), lru in sorted(self._targets.items())]

    def _lru(self, table: dict, key: Any) -> _Lru:
        lru = table.get(key)
        if lru is None:
            lru = table[key] = _Lru(self.entries)
        return lru
