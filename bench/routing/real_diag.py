"""What the real-server bench watches besides the clients' own records.

- ``CpuWatch``: the machine's busy CPU time against our process tree's (bench, llama-servers,
  balancer or sglang-router), so a run disturbed by other work on the machine says so.
- ``SlotSampler`` (``--diagnose``): each llama-server's ``/slots``, polled every 0.1 s; each
  turn is then matched to the slot that served it (its ``n_prompt_tokens`` and
  ``n_prompt_tokens_cache`` are the turn's usage), for every policy, sglang-router included,
  and a queued turn is checked for slots that stood idle while it waited.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

_TICK = os.sysconf("SC_CLK_TCK")


def _busy_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def _tree_s(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and every live descendant."""
    stats: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        rest = raw[raw.rfind(")") + 2:].split()  # after "pid (comm) "
        stats[int(name)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo.extend(children.get(pid, ()))
    return total


class CpuWatch:
    """``start()`` then ``stop()`` (before our children exit): the share of the machine's CPUs
    that processes outside our tree used meanwhile."""

    def start(self) -> None:
        self._t, self._busy, self._own = time.monotonic(), _busy_s(), _tree_s(os.getpid())

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t
        busy, own = _busy_s() - self._busy, _tree_s(os.getpid()) - self._own
        cpus = os.cpu_count() or 1
        return {"wall_s": wall, "busy_cpu_s": busy, "own_cpu_s": own,
                "foreign_share": max(0.0, busy - own) / (cpus * wall) if wall > 0 else 0.0}


@dataclass
class SlotSampler:
    urls: dict[str, str]  # server name -> base URL
    interval_s: float = 0.1
    started: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)  # one per change seen
    _task: asyncio.Task | None = None

    def start(self, started: float) -> None:
        self.started = started
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        last: dict[tuple[str, int], tuple[Any, ...]] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                for name, url in self.urls.items():
                    try:
                        async with session.get(url + "/slots") as resp:
                            slots = await resp.json(content_type=None)
                    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                        continue
                    now = time.monotonic() - self.started
                    for s in slots if isinstance(slots, list) else ():
                        state = (s.get("is_processing"), s.get("id_task"), s.get("n_prompt_tokens"),
                                 s.get("n_prompt_tokens_cache"))
                        if last.get((name, s["id"])) != state:
                            last[(name, s["id"])] = state
                            self.samples.append({"t": now, "server": name, "slot": s["id"], "busy": state[0],
                                                 "task": state[1], "n_prompt": state[2], "n_cache": state[3]})
                await asyncio.sleep(self.interval_s)


def attribute(turns: list[dict[str, Any]], samples: list[dict[str, Any]]) -> None:
    """Give each turn the (server, slot) whose /slots showed its prompt: ``slot_server``,
    ``slot`` (None when no sample caught it)."""
    tasks: dict[tuple[str, int, Any], dict[str, Any]] = {}
    for s in samples:
        if s["task"] is not None:
            tasks.setdefault((s["server"], s["slot"], s["task"]), s)
    for t in turns:
        hits = [s for s in tasks.values() if s["n_prompt"] == t["prompt_tokens"] and s["n_cache"] == t["cache_n"]
                and t["start_s"] - 0.5 <= s["t"] <= t["end_s"] + 0.5]
        hit = min(hits, key=lambda s: abs(s["t"] - t["start_s"]), default=None)
        t["slot_server"], t["slot"] = (hit["server"], hit["slot"]) if hit else (None, None)


def idle_while_queued(turns: list[dict[str, Any]], samples: list[dict[str, Any]], names: list[str],
                      slots: int) -> dict[str, Any]:
    """For turns the balancer queued over 0.2 s: how often some llama-server slot stood idle
    (by /slots) at the middle of the wait, and how long the waits were."""
    timeline: dict[tuple[str, int], list[tuple[float, bool]]] = {(n, i): [(0.0, False)] for n in names
                                                                  for i in range(slots)}
    for s in samples:
        timeline.setdefault((s["server"], s["slot"]), []).append((s["t"], bool(s["busy"])))

    def busy_at(key: tuple[str, int], t: float) -> bool:
        state = False
        for when, busy in timeline[key]:
            if when > t:
                break
            state = busy
        return state

    queued = [t for t in turns if (t.get("queue_wait_ms") or 0) > 200]
    idle = 0
    for t in queued:
        mid = t["start_s"] + t["queue_wait_ms"] / 2000.0
        if any(not busy_at(key, mid) for key in timeline):
            idle += 1
    return {"queued": len(queued), "some_slot_idle_midway": idle,
            "queue_wait_s": round(sum((t.get("queue_wait_ms") or 0) for t in turns) / 1000.0, 1)}


@dataclass
class SnapshotSampler:
    """The balancer's own view (``/llmhealth-snapshot``) every ``interval_s``: each backend's
    status, whether it was suspect or its circuit open, how old its last poll was."""

    url: str
    interval_s: float = 0.5
    samples: list[dict[str, Any]] = field(default_factory=list)
    _task: asyncio.Task | None = None

    def start(self, started: float) -> None:
        self.started = started
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        from datetime import datetime

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                try:
                    async with session.get(self.url + "/llmhealth-snapshot") as resp:
                        snap = await resp.json(content_type=None)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    await asyncio.sleep(self.interval_s)
                    continue
                backends = snap.get("backends") or []
                if isinstance(backends, dict):
                    backends = [{"name": k, **v} for k, v in backends.items()]
                wall = time.time()
                for b in backends:
                    updated = (b.get("last") or {}).get("updated_at")
                    try:
                        age = wall - datetime.fromisoformat(updated.replace("Z", "+00:00")).timestamp()
                    except (AttributeError, ValueError):
                        age = None
                    self.samples.append({"t": time.monotonic() - self.started, "server": b.get("name"),
                                         "status": b.get("status"), "suspect": b.get("suspect"),
                                         "circuit_open": b.get("circuit_open"), "slots_busy": b.get("slots_busy"),
                                         "inflight": b.get("total_inflight"), "queue": b.get("queue"),
                                         "poll_age_s": age})
                await asyncio.sleep(self.interval_s)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in sorted({s["server"] for s in self.samples}):
            mine = [s for s in self.samples if s["server"] == name]
            ages = [s["poll_age_s"] for s in mine if s["poll_age_s"] is not None]
            out[name] = {"samples": len(mine),
                         "not_idle_or_busy": sum(1 for s in mine if s["status"] not in ("idle", "busy")),
                         "suspect": sum(1 for s in mine if s["suspect"]),
                         "circuit_open": sum(1 for s in mine if s["circuit_open"]),
                         "poll_age_max_s": round(max(ages), 1) if ages else None,
                         "poll_age_over_3s": sum(1 for a in ages if a > 3.0)}
        return out
