"""Everything one simulated server holds while it runs, in one app-scoped object."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable

from .config import SimConfig
from .events import EventLog
from .metrics import Stats
from .slots import Slot, SlotPool

FaultSetter = Callable[[str | None], Awaitable[None]]


class SimState:
    """Config, slot pools (one per instance), counters and the event log.

    Pools are built once from the config: changing `instances`, `slots` or
    `ctx_per_slot` on a running server has no effect.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.instances = config.instance_names()
        self.pools: dict[str, SlotPool] = {
            name: SlotPool(name, i * config.slots, config.slots, config.ctx_per_slot, config.cache_ram_prompts)
            for i, name in enumerate(self.instances)
        }
        self.stats = Stats()
        self.events = EventLog()
        self.created = int(time.time())
        self._task_ids = itertools.count()
        # Set by start_sim: applies a fault, including opening/closing the socket.
        self.set_fault: FaultSetter | None = None

    def next_task_id(self) -> int:
        return next(self._task_ids)

    def instance_for(self, model: object) -> str:
        """The instance a request's `model` names, else the first (llama-server ignores it)."""
        if isinstance(model, str) and model in self.pools:
            return model
        return self.instances[0]

    def all_slots(self) -> list[Slot]:
        return [slot for pool in self.pools.values() for slot in pool.slots]

    def any_busy(self) -> bool:
        return any(slot.busy for slot in self.all_slots())
