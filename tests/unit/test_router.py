"""routing/router.py: the whole decide -> attempt -> retry flow, with a scripted data path.

No sockets, no aiohttp: the ``Router`` is built from the plain stores and a hand-set clock,
and each try runs one step of a ``FakeAttempt`` script (llama-swap's ``fakeEffects`` is the
model): answer with a status, fail before answering, break off after the answer was
accepted, or hold the slot until the test lets go.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
import pytest
from multidict import CIMultiDict

from llama_balancer.core.auth import AuthPolicy
from llama_balancer.core.config import Config, ServerConfig, config_from_data
from llama_balancer.core.errors import MissingModel, QueueFullError, QueueTimeout, UpstreamError
from llama_balancer.core.health import HealthSample
from llama_balancer.core.identity import TrustedProxies
from llama_balancer.io.backend_watch import BackendWatch
from llama_balancer.io.observability import AccessLog, Metrics, queue_gauges
from llama_balancer.io.oplog import Notices
from llama_balancer.routing.call import Answered, Call
from llama_balancer.routing.recording import Recorder
from llama_balancer.routing.router import Router
from llama_balancer.state.access_stats import AccessStats
from llama_balancer.state.affinity import AffinityStore
from llama_balancer.state.events import EventCounts
from llama_balancer.state.exchange import Exchange
from llama_balancer.state.queue import WaitQueue
from llama_balancer.state.registry import Registry
from llama_balancer.state.series import BackendSeries
from llama_balancer.state.sticky import StickyStore

from .conftest import FakeClock

MODEL = "m"
CHAT = "/v1/chat/completions"


# --- the scripted data path ---------------------------------------------------------------


@dataclass
class Try:
    """What the router handed the data path for one try."""

    server: str
    body: dict[str, Any]
    last_try: bool
    inflight: int  # the server's in-flight count while the try ran (its slot is held)
    headers: CIMultiDict[str]


Step = Callable[[Exchange, Answered], Awaitable[str]]


def answer(status: int = 200, hold: asyncio.Event | None = None) -> Step:
    """The backend answers ``status`` (after ``hold`` is set, if given); the answer is relayed."""
    async def step(ex: Exchange, answered: Answered) -> str:
        if hold is not None:
            await hold.wait()
        if not answered.accept(status):
            return "ended"  # the router tries elsewhere
        ex.status = status
        return f"{ex.server}:{status}"
    return step


def fail(kind: str = "connect") -> Step:
    """The backend cannot be reached (or resets, times out) before any answer."""
    async def step(ex: Exchange, answered: Answered) -> str:
        raise UpstreamError(f"backend {ex.server!r} failed ({kind})", kind=kind, server=ex.server)
    return step


def break_off() -> Step:
    """The answer is accepted and begins, then the backend breaks off."""
    async def step(ex: Exchange, answered: Answered) -> str:
        assert answered.accept(200)
        ex.status = 200
        raise UpstreamError(f"backend {ex.server!r} closed the connection", kind="reset", server=ex.server)
    return step


class FakeAttempt:
    """An ``Attempt`` that plays its steps in order, one per try, and keeps what it was given."""

    def __init__(self, router: Router, *steps: Step) -> None:
        self.router, self.steps = router, list(steps)
        self.tries: list[Try] = []

    async def __call__(self, server: ServerConfig, call: Call, headers: CIMultiDict[str], body: bytes,
                       ex: Exchange, last_try: bool, answered: Answered) -> str:
        name = ex.server or ""
        self.tries.append(Try(name, orjson.loads(body), last_try, self.router.registry.state(name).total, headers))
        step = self.steps[min(len(self.tries), len(self.steps)) - 1]
        return await step(ex, answered)

    @property
    def servers(self) -> list[str]:
        return [t.server for t in self.tries]


# --- a router over plain stores -------------------------------------------------------------


class Harness:
    """A Router built as the runtime builds it, over in-memory stores and a hand-set clock."""

    def __init__(self, config: Config, clock: FakeClock) -> None:
        self.config, self.clock = config, clock
        options = config.balancer
        self.registry = Registry(config, clock)
        self.queue = WaitQueue(options.routing.queue_max, clock.monotonic)
        self.registry.on_release = self.queue.wake_all
        self.sticky = StickyStore(options.sticky_ttl_s, clock)
        self.metrics = Metrics(self.registry, lambda: queue_gauges(self.queue))
        self.recorder = Recorder(clock, self.metrics, AccessLog("off", 1, 0), BackendSeries(2.0),
                                 AccessStats(3600.0, clock), EventCounts(), trusted=lambda: TrustedProxies([]))
        self.router = Router(config=lambda: self.config, clock=clock, registry=self.registry, sticky=self.sticky,
                             affinity=AffinityStore(64), queue=self.queue, metrics=self.metrics, notices=Notices(),
                             watch=BackendWatch(clock), auth=lambda: AuthPolicy(), recorder=self.recorder)
        for name in config.servers:
            for _ in range(options.health_window):
                self.registry.record_health(name, HealthSample("idle", 3.0), f"http://{name}/llmhealth")

    def attempt(self, *steps: Step) -> FakeAttempt:
        return FakeAttempt(self.router, *steps)

    def exchange(self, path: str = CHAT) -> Exchange:
        return self.recorder.begin(f"req-{id(object())}", path, path, None, "10.0.0.9")

    async def route(self, attempt: FakeAttempt, body: dict[str, Any] | None = None, path: str = CHAT,
                    ex: Exchange | None = None) -> str:
        ex = ex or self.exchange(path)
        payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]} if body is None else body
        call = Call("POST", path, path, CIMultiDict({"Content-Type": "application/json"}), orjson.dumps(payload))
        return await self.router.route(call, ex, attempt)

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.prom.get_sample_value(name, labels) or 0.0


def harness(clock: FakeClock, servers: dict[str, dict[str, Any]] | None = None,
            models: dict[str, list[str]] | None = None, **routing: Any) -> Harness:
    servers = servers or {"PC1": {}, "PC2": {}}
    data = {
        "servers": {name: {"addr": f"http://10.0.0.{i + 1}", "health-port": 18000, "model-port": 8081, **extra}
                    for i, (name, extra) in enumerate(servers.items())},
        "models": models if models is not None else {MODEL: list(servers)},
        "fallback_server": next(iter(servers)),
        "balancer": {"routing": routing},
    }
    return Harness(config_from_data(data), clock)


async def until(predicate: Callable[[], bool]) -> None:
    """Let the other tasks run until ``predicate`` holds (no sleeps: a few loop turns)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


@asynccontextmanager
async def the_only_place_taken(h: Harness) -> AsyncIterator[asyncio.Event]:
    """A request holds the one place there is until the event is set (at the latest on exit)."""
    release = asyncio.Event()
    holding = asyncio.create_task(h.route(h.attempt(answer(200, hold=release))))
    await until(lambda: h.registry.total_inflight() == 1)
    try:
        yield release
    finally:
        release.set()
        assert await asyncio.wait_for(holding, 1.0) == "PC1:200"


# --- retries before the answer ----------------------------------------------------------------


async def test_a_server_answering_503_is_left_for_the_next_which_answers_the_request(clock):
    h = harness(clock)
    attempt = h.attempt(answer(503), answer(200))
    result = await h.route(attempt)
    first, second = attempt.servers
    assert first != second and result == f"{second}:200"
    assert [t.last_try for t in attempt.tries] == [False, True]
    assert h.metric("llama_balancer_retries_total", server=first, kind="http_503") == 1
    assert h.metric("llama_balancer_failovers_total", from_server=first, to_server=second) == 1
    assert h.registry.state(first).suspect and h.registry.total_inflight() == 0


async def test_a_connect_failure_is_retried_on_another_server_holding_one_slot_at_a_time(clock):
    h = harness(clock)
    attempt = h.attempt(fail("connect"), answer(200))
    ex = h.exchange()
    await h.route(attempt, ex=ex)
    assert len(set(attempt.servers)) == 2 and ex.retries == 1 and ex.server == attempt.servers[1]
    assert [t.inflight for t in attempt.tries] == [1, 1]  # the failed try's slot was given back first
    assert h.metric("llama_balancer_retries_total", server=attempt.servers[0], kind="connect") == 1
    assert h.registry.total_inflight() == 0


async def test_the_last_try_failing_raises_its_error_and_counts_toward_the_circuit(clock):
    h = harness(clock)
    attempt = h.attempt(fail("connect"), fail("timeout"))
    with pytest.raises(UpstreamError) as raised:
        await h.route(attempt)
    assert raised.value.kind == "timeout" and raised.value.server == attempt.servers[1]
    assert [h.registry.state(name).failures for name in attempt.servers] == [1, 1]
    assert h.registry.total_inflight() == 0


async def test_a_retryable_status_on_the_last_try_is_relayed_to_the_client_not_retried(clock):
    h = harness(clock, {"PC1": {}})
    attempt = h.attempt(answer(503))
    assert await h.route(attempt) == "PC1:503"
    assert [t.last_try for t in attempt.tries] == [True]


async def test_max_retries_bounds_the_tries_even_with_servers_left(clock):
    h = harness(clock, {"PC1": {}, "PC2": {}, "PC3": {}}, max_retries=1)
    attempt = h.attempt(answer(502), answer(502), answer(200))
    assert (await h.route(attempt)).endswith(":502")
    assert [t.last_try for t in attempt.tries] == [False, True]


async def test_a_status_outside_retry_statuses_is_the_answer(clock):
    h = harness(clock, retry_statuses=[502])
    attempt = h.attempt(answer(503), answer(200))
    assert (await h.route(attempt)).endswith(":503") and len(attempt.tries) == 1


async def test_nothing_is_retried_once_the_answer_was_accepted(clock):
    h = harness(clock)
    attempt = h.attempt(break_off(), answer(200))
    with pytest.raises(UpstreamError) as raised:
        await h.route(attempt)
    assert raised.value.kind == "reset" and len(attempt.tries) == 1
    assert h.metric("llama_balancer_retries_total", server=attempt.servers[0], kind="reset") == 0


async def test_a_data_path_that_must_not_raise_is_retried_elsewhere_when_accept_says_no(clock):
    h = harness(clock)

    def told(status: int) -> Step:
        async def step(ex: Exchange, answered: Answered) -> str:
            return f"{ex.server}:{status}" if answered.accept(status) else "ended"  # a sans-IO exchange
        return step

    attempt = h.attempt(told(503), told(200))
    result = await h.route(attempt)
    first, second = attempt.servers
    assert result == f"{second}:200" and first != second
    assert h.metric("llama_balancer_retries_total", server=first, kind="http_503") == 1
    assert h.sticky.target("10.0.0.9", MODEL) == (second, MODEL)


# --- what success and failure leave behind ------------------------------------------------------


async def test_success_binds_the_client_to_the_server_that_answered_not_the_one_that_failed(clock):
    h = harness(clock)
    attempt = h.attempt(answer(503), answer(200))
    await h.route(attempt)
    assert h.sticky.target("10.0.0.9", MODEL) == (attempt.servers[1], MODEL)
    again = h.attempt(answer(200))
    await h.route(again)
    assert again.servers == [attempt.servers[1]]  # the binding holds for the next turn


async def test_consecutive_failures_open_the_circuit_until_circuit_open_s_passes(clock):
    h = harness(clock, {"PC1": {}}, circuit_failures=2, circuit_open_s=10.0)
    state = h.registry.state("PC1")
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await h.route(h.attempt(fail("reset")))
    assert state.health(clock.monotonic()) == "invalid"
    clock.advance(10.0)
    assert state.health(clock.monotonic()) == "suspect"
    await h.route(h.attempt(answer(200)))
    assert state.failures == 0


async def test_a_server_with_an_open_circuit_is_passed_over(clock):
    h = harness(clock, circuit_failures=1)
    first = h.attempt(fail("connect"), answer(200))
    await h.route(first)
    broken, working = first.servers
    then = h.attempt(answer(200))
    await h.route(then)
    assert then.servers == [working]


# --- the queue ---------------------------------------------------------------------------------


async def test_a_full_cluster_queues_the_request_until_a_place_frees(clock):
    h = harness(clock, {"PC1": {"request-max": 1}})
    waiting_ex = h.exchange()
    async with the_only_place_taken(h) as release:
        waiting = asyncio.create_task(h.route(h.attempt(answer(200)), ex=waiting_ex))
        await until(lambda: len(h.queue) == 1)
        clock.advance(1.5)
        release.set()
        assert await asyncio.wait_for(waiting, 1.0) == "PC1:200"
    assert waiting_ex.queue_wait_s == 1.5  # measured on the injected clock
    assert len(h.queue) == 0 and h.registry.total_inflight() == 0


async def test_a_request_finding_the_queue_full_is_answered_429_with_retry_after(clock):
    h = harness(clock, {"PC1": {"request-max": 1}}, queue_max=0)
    refused = h.attempt(answer(200))
    async with the_only_place_taken(h):
        with pytest.raises(QueueFullError) as raised:
            await h.route(refused)
    assert raised.value.status == 429 and raised.value.headers == {"Retry-After": "1"} and refused.tries == []


async def test_a_request_waiting_past_queue_timeout_s_is_answered_503_and_leaves_the_queue(clock):
    h = harness(clock, {"PC1": {"request-max": 1}}, queue_timeout_s=5.0)
    late = h.attempt(answer(200))
    async with the_only_place_taken(h):
        waiting = asyncio.create_task(h.route(late))
        await until(lambda: len(h.queue) == 1)
        clock.advance(5.01)  # the deadline is the injected clock's: no real time passes
        h.queue.wake_all()
        with pytest.raises(QueueTimeout) as raised:
            await asyncio.wait_for(waiting, 1.0)
    assert raised.value.status == 503 and late.tries == [] and len(h.queue) == 0


# --- fallback and refusals before any try -------------------------------------------------------


async def test_a_request_without_a_model_goes_to_the_fallback_server_in_one_try(clock):
    h = harness(clock, {"PC1": {}, "PC2": {}}, models={MODEL: ["PC2"]})
    attempt = h.attempt(answer(503), answer(200))
    ex = h.exchange("/completion")
    assert await h.route(attempt, {"prompt": "x"}, path="/completion", ex=ex) == "PC1:503"
    assert [(t.server, t.last_try) for t in attempt.tries] == [("PC1", True)]
    assert ex.reason == "fallback" and h.sticky.target("10.0.0.9", MODEL) is None


async def test_a_model_no_pattern_matches_goes_to_the_fallback_server(clock):
    h = harness(clock, {"PC1": {}, "PC2": {}}, models={MODEL: ["PC2"]})
    attempt = h.attempt(answer(200))
    await h.route(attempt, {"model": "other", "messages": []})
    assert attempt.servers == ["PC1"] and attempt.tries[0].body["model"] == "other"


async def test_a_chat_request_without_a_model_is_refused_before_any_try(clock):
    h = harness(clock)
    attempt = h.attempt(answer(200))
    with pytest.raises(MissingModel):
        await h.route(attempt, {"messages": []})
    assert attempt.tries == []


async def test_the_client_key_never_reaches_the_backend_and_the_request_id_does(clock):
    h = harness(clock, {"PC1": {"api_key": "backend-secret"}})
    attempt = h.attempt(answer(200))
    ex = h.exchange()
    await h.route(attempt, ex=ex)
    headers = attempt.tries[0].headers
    assert headers["Authorization"] == "Bearer backend-secret" and headers["X-Request-Id"] == ex.request_id


# --- recording ---------------------------------------------------------------------------------


async def test_the_record_is_timed_on_the_injected_clock_and_counted_once(clock):
    h = harness(clock)
    ex = h.exchange()
    await h.route(h.attempt(answer(200)), ex=ex)
    clock.advance(2.0)
    h.recorder.finish(ex, None)
    assert ex.duration_s == 2.0 and ex.outcome == "completed"
    assert h.metric("llama_balancer_requests_total", endpoint=CHAT, status="200", outcome="completed",
                    server="PC1", instance="(other)", model="(other)") == 1  # /v1/models not read yet


async def test_a_refused_request_is_recorded_as_rejected_with_its_status(clock):
    h = harness(clock, {"PC1": {"request-max": 1}}, queue_max=0)
    ex = h.exchange()
    async with the_only_place_taken(h):
        with pytest.raises(QueueFullError) as raised:
            await h.route(h.attempt(answer(200)), ex=ex)
    h.recorder.finish(ex, raised.value)
    assert (ex.status, ex.outcome) == (429, "rejected")
    assert h.recorder.events.summary(clock.monotonic())["last_5m"]["4xx"] == {"queue_full": 1}
