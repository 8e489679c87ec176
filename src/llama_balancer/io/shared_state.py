"""Replicas that act as one: shared ``request-max`` through Redis leases, and the link's
shared/degraded state machine.

Admission is one EVALSHA (io/shared_scripts.ADMIT) with a short timeout, on a connection
that also carries the batched releases and the renewal, so a release is never overtaken by
a renewal that would bring the lease back. Everything else is behind the request:
releases go in batches, the renewal and liveness refresh in one call per interval, soft
state through ``SoftSync`` on a second connection, other replicas' news on a third
(pub/sub: a full server freed a place -> the queue wakes at once; record batches).

Far from a server's limit, a replica keeps a reserve of leases no request uses yet
(``lease_reserve``, ``core.replicas.reserve_target``): a request takes one at once, and its
release refills the reserve; a background call tops it up (io/shared_scripts.RESERVE). The
limit stays exact (reserved places count in Redis); only the round trip leaves the path.

When Redis fails or is slow, the replica goes degraded at once (one log line): admission
then never touches Redis and each server admits ``ceil(request-max / live replicas)`` of
this replica's own requests; reconnection is tried every ``retry_interval_s``, and the first
good round (leases renewed or re-created, records loaded and sent) ends it (one line).
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from typing import Any

import orjson

from ..core.config import SharedStateOptions
from ..core.replicas import Link, batch_sender, reserve_target
from ..state.affinity import AffinityStore
from ..state.backend import BackendState
from ..state.clock import Clock, iso_utc
from ..state.leases import Lease, LeaseBook
from ..state.registry import Registry
from ..state.sticky import StickyStore
from .resp import RedisAddress, RedisUnavailable, ReplyError, RespConnection, command, connect
from .shared_scripts import SCRIPTS, SHA, Keys
from .shared_sync import SoftSync

log = logging.getLogger("llama_balancer.shared")

RELEASE_BATCH = 512
FAILURES = (RedisUnavailable, ReplyError, TimeoutError, asyncio.TimeoutError)


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class SharedState:
    """The Redis adapter: the registry's ``Admission``, plus the loops that keep it true."""

    def __init__(self, options: SharedStateOptions, registry: Registry, sticky: StickyStore,
                 affinity: AffinityStore, clock: Clock) -> None:
        self.options = options
        self.address = RedisAddress.from_url(options.redis_url)
        self.replica_id = options.replica_id or default_replica_id()
        self.keys = Keys(options.key_prefix)
        self._registry = registry
        self._clock = clock
        self.link = Link(live=options.assumed_replicas)
        self.book = LeaseBook(f"{self.replica_id}:{secrets.token_hex(3)}")
        self.sync = SoftSync(self.keys, self.replica_id, sticky, affinity, registry, clock,
                             options.sticky_entries, options.affinity_entries, options.affinity_ttl_s)
        self._hot: RespConnection | None = None  # admit, release, renew: one FIFO
        self._bulk: RespConnection | None = None  # soft state
        self._sub: RespConnection | None = None  # pub/sub
        self._kick = asyncio.Event()  # the supervisor looks now (a connection broke)
        self._releases = asyncio.Event()
        self._writes = asyncio.Event()
        self._refill = asyncio.Event()
        self.book.on_release = self._releases.set
        self.sync.on_queued = self._writes.set
        self._tasks: list[asyncio.Task[None]] = []
        self._started = clock.wall()
        self.counts = {"granted": 0, "reserved": 0, "refused": 0, "local": 0, "errors": 0}
        registry.admission = self
        registry.set_degraded(self.link.live)  # nothing known until Redis answers

    # --- the request's path ----------------------------------------------------------------

    async def admit(self, state: BackendState) -> Lease | None:
        """A lease on ``state``'s server, None when full. Redis decides while shared; while
        degraded (or once a call fails or is slow) this replica's share does."""
        hot = self._hot
        if self.link.mode == "degraded" or hot is None:
            return self._admit_locally(state)
        lease = self.book.take_spare(state.name)
        if lease is not None:  # leased in Redis already: no round trip
            self.counts["reserved"] += 1
            if self.book.missing_spares(state.name) * 2 > self.book.spare_target.get(state.name, 0):
                self._refill.set()
            return lease
        lease_id = self.book.next_id()
        limit = state.server.request_max
        state.admitting += 1
        try:
            granted, count = await hot.request(command(
                "EVALSHA", SHA["admit"], 1, self.keys.leases(state.name), limit,
                int(self.options.lease_ttl_s * 1000), lease_id), self.options.admit_timeout_s)
        except FAILURES as exc:
            failure: BaseException | None = exc
        except asyncio.CancelledError:
            self.book.forget(state.name, lease_id)  # it may have been granted
            raise
        else:
            failure = None
        finally:
            state.admitting -= 1
        if failure is not None:
            self.book.forget(state.name, lease_id)
            self.counts["errors"] += 1
            self._degrade(f"admission failed: {_describe(failure)}")
            return self._admit_locally(state)
        if granted:
            self.counts["granted"] += 1
            lease = self.book.grant(state.name, lease_id)
            self._learn(state, count)
            return lease
        self.counts["refused"] += 1
        self._learn(state, count)
        return None

    def _admit_locally(self, state: BackendState) -> Lease | None:
        if state.limit is not None and state.total + state.admitting >= state.limit:
            return None
        self.counts["local"] += 1
        return self.book.grant(state.name, self.book.next_id())

    def _learn(self, state: BackendState, count: int) -> bool:
        """Redis counted ``count`` places on the server: the others' are the rest. True when
        that made room (the queue should look again)."""
        if self.link.mode == "degraded":
            return False
        remote = max(int(count) - self.book.count(state.name), 0)
        freed = remote < state.remote
        state.remote = remote
        self._retarget(state)
        return freed

    def _retarget(self, state: BackendState) -> None:
        """The reserve this server's room allows now; spares above it go back, a shortfall
        is topped up in the background."""
        limit = state.server.request_max
        if limit is None:
            return
        target = reserve_target(limit, state.remote, self.book.in_use(state.name), self.link.live,
                                self.options.lease_reserve)
        self.book.trim_spare(state.name, target)
        if self.book.missing_spares(state.name):
            self._refill.set()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Try Redis once (bounded by connect_timeout_s), then keep the link in the background."""
        try:
            await asyncio.wait_for(self._round(), self.options.connect_timeout_s + self.options.op_timeout_s)
        except FAILURES as exc:
            self._close()
            log.warning("shared state: Redis at %s not reachable at start (%s); degraded until it is: each "
                        "replica admits ceil(request-max / %d)", self.address.display(), _describe(exc),
                        self.link.live)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._supervise()), loop.create_task(self._send_releases()),
                       loop.create_task(self._send_writes()), loop.create_task(self._fill_reserves())]

    async def stop(self) -> None:
        """Give back what is held, leave the replica set, close (each step bounded)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.book.drop_spares()
        if self.link.mode == "shared" and self._hot is not None:
            try:
                async with asyncio.timeout(self.options.op_timeout_s * 2):
                    await self._flush_releases()
                    await self.sync.flush(self._call_bulk)
                    await self._hot.call("ZREM", self.keys.replicas, self.replica_id, timeout=self.options.op_timeout_s)
                    await self._hot.call("DEL", self.keys.replica(self.replica_id), timeout=self.options.op_timeout_s)
            except FAILURES as exc:
                log.info("shared state: could not say goodbye to Redis (%s); leases expire by themselves",
                         _describe(exc))
        self._close()
        self.sync.detach()
        self._registry.admission = None

    async def _supervise(self) -> None:
        while True:
            try:
                await self._round()
                wait = self.options.renew_interval_s
            except FAILURES as exc:
                self.counts["errors"] += 1
                self._degrade(_describe(exc))
                self._close()
                wait = self.options.retry_interval_s
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _round(self) -> None:
        """Connect where needed, renew, and end degraded mode after a good renewal."""
        fresh = self._hot is None or self._hot.closed or self._sub is None or self._sub.closed \
            or self._bulk is None or self._bulk.closed
        if fresh:
            self.book.drop_spares()  # a new connection may be a restarted Redis that never saw them
            await self._connect()
        live, counts = await self._tick()
        self.sync.alone = live <= 1
        was_degraded = self.link.mode == "degraded"
        if was_degraded:
            if fresh or not self.link.ever_shared:
                await self.sync.load(self._call_bulk)  # what others wrote while we were away
            await self.sync.flush(self._call_bulk)
        first = not self.link.ever_shared
        if self.link.ok(self._clock.monotonic(), live):
            self._registry.set_degraded(None)
            if first:
                log.info("shared state: replica %s on Redis at %s, %d live replica(s)", self.replica_id,
                         self.address.display(), live)
            else:
                log.info("shared state restored: Redis at %s answers again, %d live replica(s), limits "
                         "shared again", self.address.display(), live)
            self._releases.set()
        freed = any([self._learn(state, count) for state, count in counts])
        if freed or was_degraded:
            self._wake()

    async def _connect(self) -> None:
        self._close()
        timeout = self.options.connect_timeout_s
        self._hot = await connect(self.address, timeout, on_lost=self._lost)
        self._bulk = await connect(self.address, timeout, on_lost=self._lost)
        for name, text in SCRIPTS.items():
            await self._hot.call("SCRIPT", "LOAD", text, timeout=self.options.op_timeout_s)
        self._sub = await connect(self.address, timeout, on_push=self._on_push, on_lost=self._lost)
        self._sub.write(command("SUBSCRIBE", self.keys.released, self.keys.state))

    def _close(self) -> None:
        for conn in (self._hot, self._bulk, self._sub):
            if conn is not None:
                conn._on_lost = None
                conn.close()
        self._hot = self._bulk = self._sub = None

    def _lost(self, conn: RespConnection) -> None:
        self._degrade("connection to Redis lost")
        self._kick.set()

    def _degrade(self, reason: str) -> None:
        if self.link.fail(self._clock.monotonic(), reason):
            self.book.drop_spares()
            self._registry.set_degraded(self.link.live)
            self.sync.forget_pins()
            log.warning("shared state degraded: %s; each replica admits ceil(request-max / %d) on its own "
                        "until Redis answers again", reason, self.link.live)
            self._wake()

    def _wake(self) -> None:
        if self._registry.on_release is not None:
            self._registry.on_release()

    # --- behind the request ----------------------------------------------------------------

    async def _tick(self) -> tuple[int, list[tuple[BackendState, int]]]:
        """Liveness and every lease we hold, renewed in one call; Redis's counts back."""
        registry = self._registry
        limited = [state for name in registry.names()
                   if (state := registry.state(name)).server.request_max is not None]
        keys = [self.keys.replicas, self.keys.replica(self.replica_id)] + [self.keys.leases(s.name) for s in limited]
        info = orjson.dumps({"id": self.replica_id, "host": socket.gethostname(), "pid": os.getpid(),
                             "started": iso_utc(self._started)})
        args: list[Any] = [self.replica_id, int(self.options.liveness_ttl_s * 1000),
                           int(self.options.lease_ttl_s * 1000), info]
        for state in limited:
            ids = self.book.ids(state.name)
            args.append(len(ids))
            args.extend(ids)
        reply = await self._call_hot("tick", keys, args)
        return int(reply[0]), list(zip(limited, reply[1:]))

    async def _send_releases(self) -> None:
        while True:
            await self._releases.wait()
            self._releases.clear()
            if self.link.mode == "degraded" or self._hot is None:
                continue  # kept (bounded) until the link is back
            try:
                await self._flush_releases()
            except FAILURES as exc:
                self.counts["errors"] += 1
                self._degrade(f"release failed: {_describe(exc)}")

    async def _flush_releases(self) -> None:
        while True:
            batch = self.book.take_released(RELEASE_BATCH)
            if not batch:
                return
            by_server: dict[str, list[str]] = {}
            for server, lease_id in batch:
                by_server.setdefault(server, []).append(lease_id)
            keys = [self.keys.replicas]
            args: list[Any] = [self.keys.released, self.replica_id]
            for server, ids in by_server.items():
                state = self._registry.find(server)
                limit = state.server.request_max if state is not None else None
                keys.append(self.keys.leases(server))
                args.extend((server, limit or 0, len(ids), *ids))
            try:
                counts = await self._call_hot("release", keys, args)
            except BaseException:
                self.book.released.extendleft(reversed(batch))  # sent again when the link is back
                raise
            for server, count in zip(by_server, counts):
                state = self._registry.find(server)
                if state is not None:
                    self._learn(state, count)

    async def _fill_reserves(self) -> None:
        """Top up each server's reserve, one call per server; what does not fit is not leased."""
        while True:
            await self._refill.wait()
            self._refill.clear()
            for name in self._registry.names():
                state = self._registry.find(name)
                missing = self.book.missing_spares(name)
                if state is None or not missing or self.link.mode == "degraded" or self._hot is None:
                    continue
                ids = [self.book.next_id() for _ in range(missing)]
                limit = state.server.request_max or 0
                try:
                    granted, count = await self._call_hot(
                        "reserve", [self.keys.leases(name)], [limit, int(self.options.lease_ttl_s * 1000), *ids])
                except FAILURES as exc:
                    for lease_id in ids:
                        self.book.forget(name, lease_id)  # some may have been granted
                    self.counts["errors"] += 1
                    self._degrade(f"reserve failed: {_describe(exc)}")
                    continue
                except asyncio.CancelledError:
                    for lease_id in ids:
                        self.book.forget(name, lease_id)
                    raise
                if self.link.mode == "degraded":  # the link broke meanwhile: nothing kept
                    for lease_id in ids[:int(granted)]:
                        self.book.forget(name, lease_id)
                    continue
                self.book.add_spare(name, ids[:int(granted)])
                state.remote = max(int(count) - self.book.count(name), 0)
                self.book.trim_spare(name, self.book.spare_target.get(name, 0))  # requests may have come back meanwhile

    async def _send_writes(self) -> None:
        while True:
            await self._writes.wait()
            if self.sync.alone:  # only replicas yet to start read these (from Redis): no hurry
                await self._sleep_unless_joined(self.options.renew_interval_s)
            self._writes.clear()
            if self.link.mode == "degraded" or self._bulk is None:
                continue  # the outbox keeps the newest change per key until the link is back
            try:
                await self.sync.flush(self._call_bulk)
            except FAILURES as exc:
                self.counts["errors"] += 1
                self._degrade(f"shared write failed: {_describe(exc)}")

    async def _sleep_unless_joined(self, seconds: float) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while self.sync.alone and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(min(0.05, seconds))

    def _on_push(self, value: Any) -> None:
        if not isinstance(value, list) or len(value) != 3 or value[0] != b"message":
            return
        channel, data = value[1].decode(errors="replace"), value[2]
        if batch_sender(data) == self.replica_id:
            return
        if channel == self.keys.state:
            self.sync.apply_message(data)
            return
        freed = False
        for line in data.split(b"\n")[1:]:
            name, _, count = line.decode(errors="replace").rpartition("\t")
            state = self._registry.find(name)
            if state is not None and count.isdigit():
                self._learn(state, int(count))
                freed = True
        if freed:
            self._wake()

    async def _call_hot(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return await self._eval(self._hot, script, keys, args)

    async def _call_bulk(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return await self._eval(self._bulk, script, keys, args)

    async def _eval(self, conn: RespConnection | None, script: str, keys: list[str], args: list[Any]) -> Any:
        if conn is None or conn.closed:
            raise RedisUnavailable("not connected")
        payload = command("EVALSHA", SHA[script], len(keys), *keys, *args)
        timeout = self.options.op_timeout_s
        try:
            return await conn.request(payload, timeout)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await conn.request(command("SCRIPT", "LOAD", SCRIPTS[script]), timeout)  # Redis restarted under us
        return await conn.request(payload, timeout)

    # --- what it shows ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        link = self.link
        return {
            "enabled": True, "mode": link.mode, "degraded": link.mode == "degraded",
            "replica_id": self.replica_id, "redis": self.address.display(), "live_replicas": link.live,
            "since_s": round(self._clock.monotonic() - link.since, 3) if link.transitions else None,
            "reason": link.reason or None, "leases_held": self.book.total(), "leases_spare": self.book.spares(),
            "admissions": dict(self.counts), "transitions": link.transitions,
            "pending_writes": len(self.sync.outbox), "records_applied": self.sync.applied,
        }


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "Redis did not answer in time"
    return str(exc) or type(exc).__name__
