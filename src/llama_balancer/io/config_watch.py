"""Notices a changed config file by polling its modification time (portable, no inotify)."""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Awaitable, Callable

log = logging.getLogger("llama_balancer.config")


class ConfigWatcher:
    def __init__(self, path: str, interval_s: float, on_change: Callable[[], Awaitable[object]]) -> None:
        self.path = path
        self.interval_s = interval_s
        self._on_change = on_change
        self._seen = self._stamp()
        self._task: asyncio.Task[None] | None = None

    def _stamp(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="config-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def mark_seen(self) -> None:
        """After a reload by other means (SIGHUP, admin call), don't reload the same file again."""
        self._seen = self._stamp()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            stamp = self._stamp()
            if stamp is not None and stamp != self._seen:
                self._seen = stamp
                log.info("config file %s changed", self.path)
                try:
                    await self._on_change()
                except Exception:
                    log.exception("reload after a file change failed")
