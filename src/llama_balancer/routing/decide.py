"""Where a routed request goes: the configured policy over live state, waiting in the
bounded queue while every eligible backend is full.

Where replicas share limits, a place on a server with ``request-max`` is also a lease that
the registry's admission grants (one Redis call); a refusal (another replica took the last
place) counts as full: the request re-decides, or waits in the queue like any other.

Every time here is the injected clock's: deadlines, the cache hold and the queue's own
timestamps agree, and a test moves them all at once."""
from __future__ import annotations

from typing import Callable

from ..core.baselines import least_loaded, round_robin
from ..core.config import Config, RoutingOptions
from ..core.errors import NoBackend, QueueFullError, QueueTimeout
from ..core.placement import Decision, Place, Queue, Reject, match_threshold, place
from ..core.prefix import Fingerprint
from ..core.routing import Route, choose_route
from ..state.affinity import AffinityStore
from ..state.clock import Clock
from ..state.exchange import Exchange
from ..state.leases import Lease
from ..state.queue import QueueFull, Ticket, WaitQueue
from ..state.registry import Registry
from ..state.sticky import StickyStore
from ..state.targets import build_targets
from .resolve import Resolved

RECHECK_S = 0.25  # a queued request re-checks at least this often (polled capacity may free)


class Placer:
    """The decision (``decide``) and the wait for it (``obtain``), over the live stores."""

    def __init__(self, config: Callable[[], Config], clock: Clock, registry: Registry, sticky: StickyStore,
                 affinity: AffinityStore, queue: WaitQueue) -> None:
        self._config = config
        self.clock, self.registry, self.sticky = clock, registry, sticky
        self.affinity, self.queue = affinity, queue
        self.turns = 0  # round-robin position (baseline policy)

    async def obtain(self, ex: Exchange, resolved: Resolved, excluded: set[str]) -> tuple[Place, Lease | None]:
        """A placement (and its lease, where limits are shared) now, or after waiting in the
        queue; raises NoBackend/QueueFullError/QueueTimeout."""
        routing = self._config().balancer.routing
        now = self.clock.monotonic
        deadline = ex.started + routing.queue_timeout_s
        ticket: Ticket | None = None
        refused = False  # the last admission was refused: re-decide once before waiting
        try:
            while True:
                # Holding out for a cached slot needs a place in the queue: never a 429 for it.
                may_hold = ticket is not None or len(self.queue) < routing.queue_max
                decision = self.decide(ex, resolved, excluded, may_hold)
                if isinstance(decision, Place):
                    if ticket is None or not self._better_waiter(ticket, decision, resolved):
                        if self.registry.admission is None:
                            return decision, None
                        lease = await self.registry.admit(decision.server)
                        if lease is not None:
                            return decision, lease
                        if not refused:  # the refusal taught us the server is full: look again
                            refused = True
                            continue
                        decision = Queue("another replica holds the last place")
                    else:
                        decision = Queue("a waiting request has this prompt cached there")
                refused = False
                if not isinstance(decision, Queue):
                    raise NoBackend(f"{decision.message}: {resolved.requested!r}")
                if ticket is None:
                    ticket = self._enqueue(ex, resolved, routing.queue_max, excluded)
                remaining = deadline - now()
                if remaining <= 0:
                    raise QueueTimeout(f"every backend for {resolved.requested!r} stayed full for "
                                       f"{routing.queue_timeout_s:g} s", headers={"Retry-After": "5"})
                if decision.waiting_for_cache:  # re-decide at the latest when the hold ends
                    hold_end = ex.started + max(routing.cache_hold_s, routing.cache_hold_max_s)
                    remaining = min(remaining, max(hold_end - now(), 0.001))
                await ticket.wait_turn(min(remaining, RECHECK_S))
        finally:
            if ticket is not None:
                ex.queue_wait_s = now() - ticket.enqueued
                await ticket.__aexit__(None, None, None)

    def decide(self, ex: Exchange, resolved: Resolved, excluded: set[str], may_hold: bool = True) -> Decision:
        """One decision under the current state: Place, Queue or Reject (pure below this)."""
        config = self._config()
        routing = config.balancer.routing
        candidates = [name for name in resolved.candidates or () if name not in excluded] \
            if excluded or routing.policy == "classic" else resolved.candidates or []
        if routing.policy == "classic":
            return self._classic(config, ex, resolved, candidates)
        now = self.clock.monotonic()
        targets = build_targets(self.registry, self.affinity, candidates, resolved.upstream_model,
                                resolved.fingerprint, now, routing)
        if routing.policy == "round-robin":
            self.turns += 1
            decision = round_robin(targets, self.turns)
        elif routing.policy == "least-loaded":
            decision = least_loaded(targets)
        else:
            sticky = self.sticky.target(ex.identity, resolved.requested)
            hold_s = hold_max_s = 0.0
            if may_hold and routing.cache_hold_s > 0:  # 0: never hold
                hold_s = ex.started + routing.cache_hold_s - now
                hold_max_s = ex.started + routing.cache_hold_max_s - now
            decision = place(targets, sticky, resolved.fingerprint.chars, routing.placement_knobs, hold_s,
                             hold_max_s)
        if isinstance(decision, Reject) and targets:
            # Every target looks unhealthy. Polls can be wrong (an agent down beside a working
            # model server), so like SPEC Part A the first listed one is tried as a last resort.
            first = targets[0]
            return Place(first.server, first.instance, "last-resort")
        return decision

    def _classic(self, config: Config, ex: Exchange, resolved: Resolved, candidates: list[str]) -> Decision:
        """SPEC Part A's policy: never queues; the first listed server is the last resort."""
        if not candidates:
            raise NoBackend(f"no backend left for {resolved.requested!r}")
        now = self.clock.monotonic()
        views = {name: self.registry.view(name) for name in candidates}
        binding = self.sticky.get(ex.identity, resolved.requested)
        route: Route = choose_route(resolved.upstream_model, candidates, config.fallback, views, binding,
                                    now, config.balancer.sticky_ttl_s)
        return Place(route.server, route.instance, route.reason)  # type: ignore[arg-type]

    def _better_waiter(self, ticket: Ticket, placed: Place, resolved: Resolved) -> bool:
        """Whether another waiting request should take this place instead: one whose prompt the
        offered slot (else server) holds meaningfully more of than ours, while ours has waited
        less than ``queue_cache_wait_s``. Fair order still decides among equals, and a request
        that has waited that long takes what it is offered.

        Under load every slot that frees is offered to the queue; taken in fair order, a slot
        whose cache holds one system prompt goes to whoever is first, whatever their prompt.
        Letting the waiter it fits go first turns most of those refills into cache hits
        (SGLang's scheduler orders its waiting queue by longest prefix match for the same reason).
        """
        routing: RoutingOptions = self._config().balancer.routing
        if routing.policy != "cache-aware" or self.clock.monotonic() - ticket.enqueued >= routing.queue_cache_wait_s:
            return False
        knobs = routing.placement_knobs

        def cached(fp: Fingerprint) -> int:
            if placed.id_slot is not None:
                return self.affinity.slot_match(placed.server, (placed.id_slot,), fp).get(placed.id_slot, 0)
            return self.affinity.match_chars(placed.server, placed.instance, fp)

        ours = cached(resolved.fingerprint)
        for other in self.queue.waiting(ticket.model):
            if other is ticket or other.fingerprint is None or placed.server not in other.servers:
                continue
            theirs = cached(other.fingerprint)
            if theirs >= match_threshold(other.fingerprint.chars, knobs) and theirs > ours + knobs.sticky_margin_chars:
                return True
        return False

    def _enqueue(self, ex: Exchange, resolved: Resolved, queue_max: int, excluded: set[str]) -> Ticket:
        servers = tuple(name for name in resolved.candidates or () if name not in excluded)
        try:
            return self.queue.ticket(ex.identity, resolved.requested, servers, resolved.fingerprint)
        except QueueFull:
            raise QueueFullError(f"too many requests waiting ({queue_max}); try again shortly",
                                 headers={"Retry-After": "1"}) from None
