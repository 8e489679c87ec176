"""``FrontConnection``: one client connection's asyncio adapter, the only place with sockets
on the model endpoints' path. It carries out what its ``h1.exchange.ExchangeMachine`` asks
(``Effects``: write, close, pause, timers, send upstream, serve) and feeds it what happens
(client bytes, backend bytes, closes, timer firings). A complete request goes to the routing
layer (``routing.Router``) in a task (started at once on Python 3.12+, ``_start``); the
router's attempts (``_attempt``) run over pooled upstream connections (``io.wire``) whose
bytes the machine reads. ``http.front.Front`` listens and owns the connections.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from secrets import token_hex
from typing import TYPE_CHECKING, Any, Callable, Coroutine

import orjson
from multidict import CIMultiDict

from ..core.auth import bearer_token, from_latin1
from ..core.config import ServerConfig
from ..core.cors import is_cors_header
from ..core.errors import BalancerError, UpstreamError
from ..core.resume import RESUMABLE_PATHS, TEXT_PATH, StreamLog, continuation, kind_of, refusal, template_request
from ..core.usage import UsageTail
from ..h1.answers import error_bytes, request_bytes
from ..h1.contract import Attempt, AttemptReport, Outcome, State, Timer
from ..h1.exchange import ExchangeMachine
from ..h1.relay import EventRelay
from ..h1.requests import RequestHead
from ..io.fetch import fetch_json
from ..io.wire import UpstreamConnection
from ..routing.call import ROUTED_PATHS, Answered, Call, ResumeElsewhere
from ..state.exchange import Exchange
from .cors import answer_lines
from .guards import auth_refusal, request_id_from
from .handoff import HandedOff

if TYPE_CHECKING:
    from .front import Front

log = logging.getLogger("llama_balancer.front")

NATIVE_PATHS = frozenset(ROUTED_PATHS)
RESUME_HEADER = "X-Balancer-Resume"  # "off": this request's stream is not resumed
# A plain answer up to this size is read whole before it is relayed (a break mid-body is
# retried elsewhere); a larger one is relayed as it comes.
HOLD_BYTES = 4 * 1024 * 1024


def is_native(head: RequestHead) -> bool:
    """The requests the front serves itself: the model endpoints' POSTs."""
    return head.method == "POST" and head.path in NATIVE_PATHS


def is_native_line(line: bytes) -> bool:
    """``is_native`` from a request line alone (a connection aiohttp serves gives it back)."""
    method, _, rest = line.partition(b" ")
    return method == b"POST" and rest.partition(b" ")[0].partition(b"?")[0].decode("latin-1") in NATIVE_PATHS


class FrontConnection(asyncio.Protocol):
    """One client connection: the asyncio side of its ``ExchangeMachine`` (its ``Effects``)."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.task: asyncio.Task[None] | None = None  # the routing of the request being served
        self.upstream: UpstreamConnection | None = None  # the backend connection of the attempt under way
        self.deadlines: dict[Timer, float] = {}  # the machine's timers (Front._fire_timers fires them)
        self._waiter: asyncio.Future[tuple[Outcome, AttemptReport]] | None = None
        self._cors: tuple[str, ...] = ()  # CORS header lines for the answer being served (cors_origins)
        self._ex: Exchange | None = None  # the record of the attempt under way
        self._tail: list[bytes] = []  # its answer's usage tail
        self._relay: EventRelay | None = None  # the request's stream, when it may be resumed
        self._starting = False  # serve() is starting the routing's task (it may run at once: _start)
        self._lost = False  # connection_lost came
        self.machine = ExchangeMachine(self, front.limits, is_native, _new_request_id)

    # -- asyncio.Protocol: events in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self.front.connections.add(self)
        if self.front.closing:
            self.machine.stop_keep_alive()

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self._guarded(self.machine.client_gone)
        self._lost = True
        if self.task is not None:
            self.task.cancel()  # the client went away: the routing (a queue place, a slot) ends with it
        else:
            self.machine.release()

    def data_received(self, data: bytes) -> None:
        try:  # _guarded, inline: this runs for every read
            self.machine.client_data(data)
        except Exception as exc:
            self._bug(exc)

    def pause_writing(self) -> None:
        self.machine.client_writable(False)

    def resume_writing(self) -> None:
        self.machine.client_writable(True)

    def _guarded(self, call: Callable[..., None], *args: object) -> None:
        """Nothing may escape a protocol callback (asyncio would log a traceback and go on)."""
        try:
            call(*args)
        except Exception as exc:
            self._bug(exc)

    def _bug(self, exc: Exception) -> None:
        """A bug of ours in a protocol callback: one log line, a 500 where no answer began, the close."""
        log.error("unexpected %s on a connection from %s: %s", type(exc).__name__, self.peer, exc)
        transport, may_answer = self.transport, self.machine.may_answer
        self.machine.client_gone()
        if self.task is not None:
            self.task.cancel()
        if transport is not None and not transport.is_closing():
            if may_answer:
                transport.write(error_bytes(BalancerError("internal error in llama-balancer"), _new_request_id(),
                                            close=True))
            transport.close()

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()

    # -- Effects: the client

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self, abort: bool) -> None:
        transport = self.transport
        if transport is not None:
            if abort:
                transport.abort()
            else:
                transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def set_timer(self, timer: Timer, seconds: float) -> None:
        self.deadlines[timer] = time.monotonic() + seconds

    def cancel_timer(self, timer: Timer) -> None:
        self.deadlines.pop(timer, None)

    def fire(self, timer: Timer, now: float) -> None:
        self._guarded(self.machine.timer_fired, timer, now)

    def refused(self, error: BalancerError) -> None:
        if error.status == 408:
            log.debug("closing a connection from %s: %s", self.peer, error.message)
        else:
            log.warning("refused a malformed request from %s: %s", self.peer, error.message)
        self.front.ctx.recorder.refused(error)

    def hand_off(self, raw: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.front.connections.discard(self)
        ctx = self.front.ctx
        handler = HandedOff(self.front.hand_off(), lambda: ctx.config.balancer.client_header_timeout_s,
                            time.monotonic() if raw else None, self.front.take_back, is_native_line)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        transport.resume_reading()
        if raw:
            handler.data_received(raw)
        self.transport = None
        self.machine.release()  # aiohttp has the connection for good

    # -- Effects: the routing layer

    def serve(self, head: RequestHead, body: bytes, refusal: BalancerError | None) -> None:
        self._relay = None
        loop = asyncio.get_running_loop()
        self._starting = True
        try:
            task = _start(loop, self._serve(head, body, refusal))
        finally:
            self._starting = False
        if not task.done():
            self.task = task
        else:  # served whole as it started (an error answer): the machine, whose call this is, hears next turn
            loop.call_soon(self._guarded, self.machine.request_done)

    async def _serve(self, head: RequestHead, body: bytes, refusal: BalancerError | None) -> None:
        ctx = self.front.ctx
        headers = CIMultiDict(head.headers)
        request_id = request_id_from(headers.get("X-Request-Id"))
        ex: Exchange | None = None
        error: BaseException | None = None
        origins = ctx.config.balancer.cors_origins
        self._cors = tuple(answer_lines(origins, headers.get("Origin"))) if origins else ()
        try:
            if ctx.auth.enabled:
                token = bearer_token(from_latin1(headers.get("Authorization")), from_latin1(headers.get("x-api-key")))
                unauthorized = auth_refusal(ctx.auth, head.method, head.path, token)
                if unauthorized is not None:
                    ctx.recorder.refused(unauthorized)
                    self.machine.fail(unauthorized, request_id, self._cors)
                    return
            ex = ctx.recorder.begin(request_id, head.path, head.path, headers.get("X-Forwarded-For"), self.peer)
            if refusal is not None:
                raise refusal
            await ctx.router.route(Call(head.method, head.path, head.target, headers, body), ex, self._attempt)
        except BalancerError as exc:
            error = exc
            self.machine.fail(exc, request_id, self._cors)
        except (asyncio.CancelledError, ConnectionError) as exc:
            error = exc  # the client went away (or the balancer stops): nobody to answer
        except Exception as exc:
            error = exc
            log.exception("unexpected error on %s %s", head.method, head.path)
            self.machine.fail(BalancerError("internal error in llama-balancer"), request_id, self._cors)
        finally:
            try:
                if ex is not None:
                    ctx.recorder.finish(ex, error)
            except Exception:  # bookkeeping must never stall the connection
                log.exception("recording %s %s failed", head.method, head.path)
            error = None  # its traceback holds this frame: no cycle left for the collector
            self.task = None
            if not self._starting:
                self._guarded(self.machine.request_done)
            if self._lost:  # the connection went while this ran: nothing is left to run for it
                self.machine.release()

    async def _attempt(self, server: ServerConfig, call: Call, headers: CIMultiDict[str], body: bytes, ex: Exchange,
                       last_try: bool, answered: Answered) -> None:
        """One try on one backend over a pooled upstream connection (routing.call.Attempt)."""
        front = self.front
        name = ex.server or ""
        host, port, tls, host_header = front.address_of(server)
        options = front.ctx.config.balancer
        pool = front.pool
        relay = self._relay
        if self.machine.resuming and relay is not None:  # the stream broke elsewhere: this server continues it
            request = await self._continuation(relay, server, name, call, headers, body, _where(name, server, call))
        else:
            request = request_bytes(call.method, call.path_qs, host_header, headers.items(), body)
            relay = self._relay = self._relay_for(name, call)
        self._ex = ex
        if relay is None:
            self._tail = []
            tail: UsageTail | None = UsageTail(self._tail)
        else:  # the relay keeps what the client got, across the servers that served it
            tail, self._tail = None, relay.tail.pieces if relay.tail is not None else []
        # answered.accept: the router's one retry decision on the status (it records a success)
        spec = Attempt(request, answered.accept, ex.request_id, pool.idle_timeout_s, self._cors,
                       is_cors_header if options.cors_origins else None, tail, relay, HOLD_BYTES)
        fresh = False
        while True:
            conn = None if fresh else pool.pooled(host, port, tls, name)
            if conn is None:
                conn = await pool.connect(host, port, tls, name, _where(name, server, call))
            if self.machine.state is not State.ROUTING:  # the client left while we connected
                conn.release(False, None)
                raise ConnectionResetError("the client went away")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            self.upstream = conn
            conn.attach(self.machine)
            self.machine.begin_attempt(spec, time.monotonic())
            try:
                outcome, report = await waiter
            except asyncio.CancelledError:
                if not waiter.done():  # cancelled under way (the balancer stops): nothing left behind
                    self.machine.client_gone()
                raise
            if outcome is Outcome.BROKEN and report.resumable:
                raise ResumeElsewhere(name, report.error or UpstreamError("broke off", kind="reset"))
            if outcome is Outcome.DONE or outcome is Outcome.BROKEN:
                if outcome is Outcome.BROKEN:
                    log.warning("answer from %s broke off: %s", name, report.error.message if report.error else "")
                    if relay is not None:
                        front.ctx.metrics.resumes.labels(name, "not_resumable").inc()
                return
            if outcome is Outcome.CLIENT_GONE:
                raise ConnectionResetError("the client went away")
            if outcome is Outcome.RETRY:
                return  # the router heard from accept() and tries elsewhere
            error = report.error or UpstreamError("failed", kind="reset")
            if error.kind == "reset" and conn.reused and not report.got_bytes and not fresh:
                fresh = True  # a pooled connection the backend had closed: once more on a new one
                continue
            raise type(error)(f"{_where(name, server, call)} {error.message}", kind=error.kind, server=name)

    def _relay_for(self, name: str, call: Call) -> EventRelay | None:
        """An event-by-event relay for a stream a llama-server gives, when resume is on: it
        may be continued elsewhere if it breaks, or ends with an SSE error event if not."""
        payload = call.payload
        if not isinstance(payload, dict) or payload.get("stream") is not True:
            return None
        ctx = self.front.ctx
        if ctx.config.balancer.resume == "off" or call.path not in RESUMABLE_PATHS:
            return None
        state = ctx.registry.find(name)
        if state is None or state.kind != "llama.cpp":
            return None
        options = payload.get("stream_options")
        log = StreamLog(kind_of(call.path), isinstance(options, dict) and options.get("include_usage") is True)
        opted_out = call.headers.get(RESUME_HEADER, "").strip().lower() in ("off", "0", "false", "no")
        log.blocked = "the client asked for no resume" if opted_out else refusal(call.path, payload)
        return EventRelay(log, UsageTail([]))

    async def _continuation(self, relay: EventRelay, server: ServerConfig, name: str, call: Call,
                            headers: CIMultiDict[str], body: bytes, where: str) -> bytes:
        """The request that continues ``relay``'s stream on ``server``: a text completion of
        the prompt so far (``core.resume``), a chat's prompt rendered by the server itself."""
        host, port, tls, host_header = self.front.address_of(server)
        try:
            payload = orjson.loads(body)  # as the router made it for this server (model, id_slot)
        except orjson.JSONDecodeError:
            payload = call.payload
        if relay.log.kind == "chat":
            answer = await fetch_json(self.front.pool, host, port, tls, name, "/apply-template",
                                      template_request(payload), headers.items(), where)
            prompt = answer.get("prompt") if isinstance(answer, dict) else None
            if not isinstance(prompt, str):
                raise UpstreamError(f"{where} /apply-template gave no prompt", kind="resume", server=name)
        else:
            prompt = payload["prompt"]
        relay.resume()
        return request_bytes("POST", TEXT_PATH, host_header, headers.items(),
                             orjson.dumps(continuation(relay.log, payload, prompt)))

    # -- Effects: the backend

    def send_upstream(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)

    def pause_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def release_upstream(self, reuse: bool, keepalive_s: float | None) -> None:
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.release(reuse and not self.front.closing, keepalive_s)

    def attempt_over(self, outcome: Outcome, report: AttemptReport) -> None:
        """The record learns at once (a task cancelled by the client's close may not run on)."""
        ex = self._ex
        if ex is not None and report.status is not None and outcome is not Outcome.RETRY:
            ex.status, ex.streamed = report.status, report.streamed
            if outcome is not Outcome.ANSWERED:
                ex.tail = self._tail
                if ex.first_byte is None:  # a resumed stream's first byte came from the first server
                    ex.first_byte = report.first_byte
                if outcome is Outcome.BROKEN and not report.resumable:
                    ex.outcome = "upstream_error"
                elif outcome is Outcome.CLIENT_GONE:
                    ex.outcome = "client_closed"
        if outcome is Outcome.ANSWERED:
            return  # the router heard through accept(); relaying goes on
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((outcome, report))


def _start(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """The request's routing as a task that runs at once, up to its first wait (Python 3.12's
    eager start; on 3.11 it starts at the loop's next turn). In a burst of requests, each then
    reaches its backend before the next one is even parsed, instead of after all of them."""
    if _EAGER:
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
    return loop.create_task(coro)


_EAGER = sys.version_info >= (3, 12)


def _where(name: str, server: ServerConfig, call: Call) -> str:
    """The subject of an attempt's error messages, put together only when one is written."""
    return f"backend {name!r} ({server.model_base}{call.path_qs})"


def _new_request_id() -> str:
    return token_hex(16)
