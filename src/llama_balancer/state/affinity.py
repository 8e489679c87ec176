"""Which prompt prefixes were recently sent where: per server x instance, and per
llama-server slot where the balancer pinned one. Bounded LRUs of fingerprint hashes.

Where replicas share state, each record goes to ``on_record`` too (written behind the
request), and other replicas' records come in through ``record(..., share=False)``."""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any, Callable, Container

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

    @property
    def items(self) -> Container[int]:
        """The remembered hashes, for membership tests only (faster than through the LRU)."""
        return self._items

    def __len__(self) -> int:
        return len(self._items)


class AffinityStore:
    def __init__(self, entries_per_target: int) -> None:
        self.entries = entries_per_target
        self._targets: dict[tuple[str, str], _Lru] = {}
        self._slots: dict[tuple[str, int], frozenset[int]] = {}  # the hashes of a slot's prompt
        self._slot_fp: dict[tuple[str, int], Fingerprint] = {}  # the prompt a slot holds
        self._held = Counter[int]()  # block hash -> how many slots hold that prefix
        self.on_record: Callable[[str, str, int | None, Fingerprint], None] | None = None

    def record(self, server: str, instance: str, slot: int | None, fp: Fingerprint, share: bool = True) -> None:
        if not fp.hashes:
            return
        if share and self.on_record is not None:
            self.on_record(server, instance, slot, fp)
        self._lru(self._targets, (server, instance)).add_all(fp.hashes)
        if slot is not None:
            # A llama-server slot keeps the KV cache of its last prompt only: this prompt
            # replaces whatever the slot was known to hold.
            key = (server, slot)
            self._release(key)
            self._slots[key] = held = frozenset(fp.hashes)
            self._slot_fp[key] = fp
            self._held.update(held)

    def match_chars(self, server: str, instance: str, fp: Fingerprint) -> int:
        lru = self._targets.get((server, instance))
        return 0 if lru is None or not fp.hashes else longest_match(fp, lru.items)[1]

    def slot_match(self, server: str, slots: tuple[int, ...], fp: Fingerprint) -> dict[int, int]:
        out = {}
        for slot in slots:
            held = self._slots.get((server, slot))
            if held is not None:
                out[slot] = longest_match(fp, held)[1]
        return out

    def slot_cached(self, server: str, slots: tuple[int, ...]) -> dict[int, int]:
        """Chars of the prompt each slot was last given by us (slots we never pinned: absent)."""
        return {slot: fp.chars for slot in slots if (fp := self._slot_fp.get((server, slot))) is not None}

    def slot_spare(self, server: str, slots: tuple[int, ...]) -> dict[int, int]:
        """Chars of each slot's prompt that another slot holds too: what overwriting the
        slot would not lose (slots we never pinned: absent).

        Reusing the slot whose prompt lives on elsewhere keeps every shared prefix (a
        system prompt) somewhere in the fleet instead of evicting its last copy.
        """
        out = {}
        for slot in slots:
            fp = self._slot_fp.get((server, slot))
            if fp is not None:
                out[slot] = longest_match(fp, _Shared(self._held))[1]
        return out

    def forget_server(self, server: str) -> None:
        """A server's cache is gone (restart, removal): its entries mean nothing any more."""
        for key in [k for k in self._slot_fp if k[0] == server]:
            self._release(key)
        self._targets = {k: v for k, v in self._targets.items() if k[0] != server}

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"server": s, "instance": i, "entries": len(lru)} for (s, i), lru in sorted(self._targets.items())]

    def _release(self, key: tuple[str, int]) -> None:
        old = self._slots.pop(key, None)
        self._slot_fp.pop(key, None)
        if old is not None:
            held = self._held
            for value in old:
                if held[value] <= 1:
                    del held[value]
                else:
                    held[value] -= 1

    def _lru(self, table: dict, key: Any) -> _Lru:
        lru = table.get(key)
        if lru is None:
            lru = table[key] = _Lru(self.entries)
        return lru


class _Shared:
    """The hashes at least two slots hold (a view for ``longest_match``)."""

    __slots__ = ("_held",)

    def __init__(self, held: Counter[int]) -> None:
        self._held = held

    def __contains__(self, value: object) -> bool:
        return self._held.get(value, 0) >= 2  # type: ignore[arg-type]
