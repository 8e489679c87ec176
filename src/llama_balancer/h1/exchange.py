"""The exchange: one client connection's requests and their answers, as a state machine.

Pure: bytes, closes and timer firings come in as method calls; what to do goes out through
``Effects`` (``contract.py``: write, close, pause, send upstream, ...), which one asyncio
adapter (``http/front_connection.py``) carries out and the tests record
(``tests/unit/test_exchange.py`` plays scripts of events against it). No asyncio, no
sockets, no clock: time comes in with the events that need it.

The states (``State``), one request at a time, in order:

- ``IDLE``: between requests; the keep-alive timer runs.
- ``RECEIVING``: a request's head and body arrive (llhttp, ``requests.RequestReader``); the
  head deadline runs from its first byte, and the idle timer still runs (a silent client).
  A request not served here (``is_native`` says no) hands the connection, with its bytes as
  sent, to aiohttp (``Effects.hand_off``).
- ``ROUTING``: the request is complete; the routing layer decides (it may queue), then
  starts an attempt on one backend (``begin_attempt``), or gives up (``fail``).
- ``SENT``: the request went to a backend and no byte reached the client yet. A failure or a
  retryable status here ends the attempt (``Outcome.RETRY`` / ``FAILED``): another backend
  may take the request. A plain answer of at most ``Attempt.hold_bytes`` stays here until
  it is read whole, so one that breaks off mid-body is retried elsewhere too.
- ``RELAYING``: the answer's head went to the client; its bytes pass as they come. From here
  on nothing is retried: a broken answer aborts the client connection, so no truncated
  answer ever looks complete. Except a stream relayed event by event (``Attempt.relay``,
  ``relay.py``): broken while it can be resumed, it goes back to ``ROUTING`` with its head
  sent, and the routing layer starts a continuation on another backend (``begin_attempt``
  again), whose events follow in the same stream; one that cannot ends with an SSE error
  event, then the close.
- ``ANSWERED``: the answer is out; the routing layer finishes its bookkeeping
  (``request_done``), then the next request, or the close.
- ``CLOSED``, ``HANDED_OFF``: final.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..core.errors import BalancerError, PayloadTooLarge, RequestTimeout, UpstreamError, UpstreamTimeout
from .answers import AnswerHead, AnswerReader, client_head, error_bytes
from .contract import NO_EFFECTS, Attempt, AttemptReport, Effects, Limits, Outcome, State, Timer
from .requests import END, Body, MalformedRequest, RequestHead, RequestReader

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# How an answer's body goes to the client: as the backend framed it; event by event through
# the attempt's relay (resumable streams); or de-chunked for a relay that did not happen and
# chunked again.
_RAW, _EVENTS, _FRAMED = "raw", "events", "framed"


@dataclass(slots=True)
class _Request:
    head: RequestHead
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    too_large: bool = False


class ExchangeMachine:
    """One client connection, from its first byte to its close."""

    def __init__(self, fx: Effects, limits: Callable[[], Limits], is_native: Callable[[RequestHead], bool],
                 request_id: Callable[[], str]) -> None:
        self.fx = fx
        self._limits_of = limits
        self._is_native = is_native
        self._new_request_id = request_id  # for answers refused before a request had one
        self.limits = limits()
        self.state = State.IDLE
        self._reader = RequestReader(self.limits.max_field_bytes, self.limits.max_headers)
        self._request: _Request | None = None
        self._pending: list[bytes] = []  # client bytes read while a request is served
        self._pending_size = 0
        self._reading_paused = False
        self._writing_paused = False
        self._keep_alive = True  # the current request's connection stays open after its answer
        self._closing = False  # the balancer stops: no keep-alive after the current answer
        self._head_sent = False  # some answer's head went to the client for the current request
        self._attempt: Attempt | None = None
        self._answer: AnswerReader | None = None
        self._mode = _RAW  # how the answer's body goes to the client (_RAW, _EVENTS, _FRAMED)
        self._held: list[bytes] = []  # a plain answer's body read so far (Attempt.hold_bytes)
        self._report = AttemptReport()
        self._last_upstream = 0.0
        self._reads = 0  # client reads so far (the idle timer's measure of silence)
        self._reads_at_idle_arm = 0
        self._arm_idle()

    @property
    def may_answer(self) -> bool:
        """No answer of the current request has begun: an error answer may still be written."""
        return not self._head_sent and self.state not in (State.RELAYING, State.CLOSED, State.HANDED_OFF)

    @property
    def resuming(self) -> bool:
        """A stream broke after its head went out and waits for a continuation (``begin_attempt``)."""
        return self.state is State.ROUTING and self._head_sent

    # -- the client side

    def client_data(self, data: bytes) -> None:
        state = self.state
        if state is State.IDLE or state is State.RECEIVING:
            self._read(data)
        elif state in (State.CLOSED, State.HANDED_OFF):
            return
        else:  # a request is being served: what follows waits (pipelining)
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > self.limits.read_ahead and not self._reading_paused:
                self._reading_paused = True
                self.fx.pause_reading()

    def client_gone(self) -> None:
        """The connection closed under us (or the client sent its FIN: as every HTTP proxy
        does, an end of input is taken for a client that left): give everything back."""
        state = self.state
        if state in (State.CLOSED, State.HANDED_OFF):
            return
        self.state = State.CLOSED
        for timer in Timer:
            self.fx.cancel_timer(timer)
        if state in (State.SENT, State.RELAYING):
            self._end_attempt(Outcome.CLIENT_GONE, reuse=False)

    def client_writable(self, writable: bool) -> None:
        """The client's transport asks us to stop (or resume) writing: the backend waits too."""
        self._writing_paused = not writable
        if self._answer is not None:
            if writable:
                self.fx.resume_upstream()
            else:
                self.fx.pause_upstream()

    def release(self) -> None:
        """The adapter is done with this machine (its connection is over, nothing runs for it):
        the reader lets go of llhttp and the machine of the adapter, so neither pair is a
        reference cycle left for the collector. Any later event is ignored."""
        self.state = State.CLOSED
        self._reader.release()
        self.fx = NO_EFFECTS

    def stop_keep_alive(self) -> None:
        """The balancer stops: an idle connection closes now, a busy one after its answer."""
        self._closing = True
        if self.state is State.IDLE:
            self._close(abort=False)

    def timer_fired(self, timer: Timer, now: float) -> None:
        state = self.state
        if timer is Timer.IDLE and (state is State.IDLE or state is State.RECEIVING):
            if self._reads != self._reads_at_idle_arm:  # bytes came: silent for less than the timeout
                self._arm_idle()
            else:
                self._close(abort=False)
        elif timer is Timer.HEAD and state is State.RECEIVING:
            part = "body" if self._request is not None else "head"
            self._refuse(RequestTimeout(f"the request {part} did not arrive within "
                                        f"{self.limits.header_timeout_s:g} s"))
        elif timer is Timer.UPSTREAM and state in (State.SENT, State.RELAYING):
            attempt = self._attempt
            assert attempt is not None and attempt.idle_timeout_s is not None
            silent = now - self._last_upstream
            if silent < attempt.idle_timeout_s:
                self.fx.set_timer(Timer.UPSTREAM, attempt.idle_timeout_s - silent)
                return
            self._upstream_failed(UpstreamTimeout(f"timed out (no byte for {attempt.idle_timeout_s:g} s)",
                                                   kind="timeout"))

    # -- the routing layer's side

    def begin_attempt(self, attempt: Attempt, now: float) -> None:
        """Send the request to a backend (state ROUTING)."""
        assert self.state is State.ROUTING, self.state
        self.state = State.SENT
        self._attempt = attempt
        self._report = AttemptReport()
        self._held = []
        dechunk = attempt.relay is not None or (self._request is not None and self._request.head.version == "1.0")
        self._answer = AnswerReader(attempt.tail, dechunk=dechunk)
        self._last_upstream = now
        if attempt.idle_timeout_s is not None:
            self.fx.set_timer(Timer.UPSTREAM, attempt.idle_timeout_s)
        if self._writing_paused:
            self.fx.pause_upstream()
        self.fx.send_upstream(attempt.request)

    def fail(self, error: BalancerError, request_id: str, extra: Iterable[str] = ()) -> None:
        """The routing layer gave up before an answer (or the answer broke): say so."""
        state = self.state
        if state in (State.CLOSED, State.HANDED_OFF):
            return
        if self._answer is not None:  # the routing layer gave up on an attempt under way
            self._end_attempt(Outcome.BROKEN if self._head_sent else Outcome.FAILED, reuse=False)
        if self._head_sent:  # an answer began: cutting the connection is the only honest end
            self._broken_off(error)
            return
        close = error.closes or not self._keep_alive or self._closing
        self._head_sent = True
        self.fx.write(error_bytes(error, request_id, close=close, extra=extra))
        self._keep_alive = not close
        self.state = State.ANSWERED

    def request_done(self) -> None:
        """The routing layer is done with the request: read on, serve what waits, or close."""
        if self.state in (State.CLOSED, State.HANDED_OFF):
            return
        if self.state is not State.ANSWERED:  # it ended without answering (cannot happen in order)
            self._close(abort=True)
            return
        self._request = None
        self._head_sent = False
        self._mode = _RAW
        if not self._keep_alive or self._closing:
            self._close(abort=False)
            return
        self.state = State.IDLE
        self.limits = self._limits_of()
        self._arm_idle()
        if not self._reader.idle:  # a request pipelined in one read with the last: parsed already
            self.state = State.RECEIVING
            self.fx.set_timer(Timer.HEAD, self.limits.header_timeout_s)
            self._take_events()
        if self._reading_paused and self.state is State.IDLE:
            self._reading_paused = False
            self.fx.resume_reading()
        pending, self._pending, self._pending_size = self._pending, [], 0
        for data in pending:
            self.client_data(data)

    # -- the backend's side

    def upstream_data(self, data: bytes, now: float) -> None:
        state = self.state
        answer = self._answer
        if answer is None or (state is not State.SENT and state is not State.RELAYING):
            return
        self._last_upstream = now
        report = self._report
        report.got_bytes = True
        try:
            body = answer.feed(data)
        except ValueError as exc:
            self._upstream_failed(UpstreamError(f"sent a malformed answer: {exc}", kind="protocol"))
            return
        if state is State.SENT:
            head = answer.head
            if head is None:
                return
            if self._head_sent:  # a continuation: the client has its head already
                if not self._continues(head):
                    return
            elif self._holds(head):  # read whole first: a break before its end is retried elsewhere
                self._held.append(body)
                if not answer.complete:
                    return
                body, self._held = b"".join(self._held), []
                if not self._accept(head):
                    return
                self._answer_started(head, body, now)
                body = b""
            elif not self._accept(head):
                return
            else:
                self._answer_started(head, body, now)
                body = b""
        if body:
            if report.first_byte is None:
                report.first_byte = now
            out = body if self._mode is _RAW else self._out(body)
            if out:
                self.fx.write(out)
        if answer.complete:
            self._answer_complete()

    def upstream_closed(self, reason: str = "") -> None:
        """The backend's connection closed (or could not be written)."""
        answer = self._answer
        if answer is None or self.state not in (State.SENT, State.RELAYING):
            return
        head = answer.head
        if head is not None and self.state is State.RELAYING and head.length < 0 and not head.chunked:
            answer.complete = True  # a body delimited by the close ends here
            self._answer_complete()
            return
        self._upstream_failed(UpstreamError(f"closed the connection{': ' + reason if reason else ''}",
                                            kind="reset"))

    # -- internals: requests

    def _read(self, data: bytes) -> None:
        self._reads += 1
        if self.state is State.IDLE:
            self.state = State.RECEIVING
            self.fx.set_timer(Timer.HEAD, self.limits.header_timeout_s)
        try:
            self._reader.feed(data)
        except MalformedRequest as exc:
            self._refuse(exc)
            return
        self._take_events()

    def _take_events(self) -> None:
        """Act on what llhttp found, up to the end of one request."""
        events = self._reader.events
        while events and self.state is State.RECEIVING:
            event = events.popleft()
            if isinstance(event, RequestHead):
                if not self._is_native(event):
                    self._hand_off()
                    return
                self._reader.keep_raw(False)
                self._start_request(event)
            elif isinstance(event, Body):
                request = self._request
                assert request is not None
                request.size += len(event.data)
                if request.size > self.limits.max_body_bytes:
                    request.too_large = True
                    self._request_complete()
                    return
                request.body.append(event.data)
            elif event is END:
                self._request_complete()

    def _start_request(self, head: RequestHead) -> None:
        self._request = request = _Request(head)
        self._keep_alive = head.keep_alive
        limit = self.limits.max_body_bytes
        if head.content_length is not None and head.content_length > limit:
            request.too_large = True  # answered at once: the body is not read
            self._request_complete()
        elif head.expect_continue and (head.content_length or head.chunked):
            self.fx.write(CONTINUE)

    def _arm_idle(self) -> None:
        """Between requests, and while one arrives: closed after ``idle_timeout_s`` without
        a byte (within twice that: reads are counted, not timed, to keep timers off the path)."""
        self._reads_at_idle_arm = self._reads
        self.fx.set_timer(Timer.IDLE, self.limits.idle_timeout_s)

    def _request_complete(self) -> None:
        request = self._request
        assert request is not None
        self.fx.cancel_timer(Timer.HEAD)
        self.fx.cancel_timer(Timer.IDLE)
        self.state = State.ROUTING
        if request.too_large:  # the routing layer records it, after its checks (auth), and answers
            self._keep_alive = False  # the rest of its body would be read as a request
            self._reader.events.clear()
            length = request.head.content_length if request.head.content_length is not None else request.size
            self.fx.serve(request.head, b"", PayloadTooLarge(f"request body of {length} bytes exceeds the limit "
                                                             f"of {self.limits.max_body_bytes} bytes"))
            return
        body = request.body[0] if len(request.body) == 1 else b"".join(request.body)
        if self._reader.events and not self._reader.raw_known:
            self._keep_alive = self._keep_alive and self._can_serve_next()
        self.fx.serve(request.head, body, None)

    def _can_serve_next(self) -> bool:
        """Whether a request parsed behind this one in the same read can be served on this
        connection: not when it is aiohttp's (``_hand_off`` could not give it its bytes), so
        this answer already says the connection closes."""
        head = next((event for event in self._reader.events if isinstance(event, RequestHead)), None)
        return head is None or self._is_native(head)

    def _hand_off(self) -> None:
        reader = self._reader
        if not reader.raw_known:  # pipelined behind one of ours in the same read: where it began is lost
            self._keep_alive = False
            self._close(abort=False)  # RFC 9112 9.3.2: the client sends it again on a new connection
            return
        raw = bytes(reader.raw) + b"".join(self._pending)
        self._pending = []
        self.state = State.HANDED_OFF
        for timer in Timer:
            self.fx.cancel_timer(timer)
        self.fx.hand_off(raw)

    def _refuse(self, error: BalancerError) -> None:
        """A request that cannot be framed (or came too slowly): answered, and the connection closes."""
        if self.state in (State.CLOSED, State.HANDED_OFF):
            return
        self.fx.refused(error)
        self._keep_alive = False
        if not self._head_sent:
            self.fx.write(error_bytes(error, self._new_request_id(), close=True))
        self._close(abort=False)

    def _close(self, abort: bool) -> None:
        if self.state in (State.CLOSED, State.HANDED_OFF):
            return
        previous = self.state
        self.state = State.CLOSED
        for timer in Timer:
            self.fx.cancel_timer(timer)
        if previous in (State.SENT, State.RELAYING):
            self._end_attempt(Outcome.BROKEN, reuse=False)
        self.fx.close(abort)

    # -- internals: the attempt

    def _accept(self, head: AnswerHead) -> bool:
        """Whether the answer goes to the client; a status the routing layer retries elsewhere
        ends the attempt instead, before any byte of it reached the client."""
        attempt = self._attempt
        assert attempt is not None
        report = self._report
        report.status, report.streamed, report.keepalive_s = head.status, head.event_stream, head.keepalive_s
        if attempt.accept(head.status):
            return True
        report.kind = f"http_{head.status}"
        self.state = State.ROUTING
        self._end_attempt(Outcome.RETRY, reuse=False)
        return False

    def _answer_started(self, head: AnswerHead, body: bytes, now: float) -> None:
        attempt = self._attempt
        request = self._request
        assert attempt is not None and request is not None
        self.state = State.RELAYING
        relayed = head.relayed
        if attempt.drop_header is not None:
            relayed = [line for line in relayed if not attempt.drop_header(line.partition(":")[0])]
            head.relayed = relayed
        http10 = request.head.version == "1.0"
        dechunked = http10 and head.chunked
        relay = attempt.relay
        if relay is not None and head.status == 200 and head.event_stream and (head.chunked or http10):
            self._mode, relay.framed = _EVENTS, not http10
        elif relay is not None and head.chunked and not http10:
            self._mode = _FRAMED  # read de-chunked for a relay that did not happen: chunked again
        keep = self._keep_alive and not dechunked and not self._closing
        client, self._keep_alive = client_head(head, attempt.request_id, keep, attempt.extra_lines, dechunked)
        self._head_sent = True
        self.fx.attempt_over(Outcome.ANSWERED, self._report)
        out = self._out(body) if body else b""
        if out:
            self._report.first_byte = now
        self.fx.write(client + out if out else client)

    def _holds(self, head: AnswerHead) -> bool:
        """Whether the answer is read whole before it is relayed (``Attempt.hold_bytes``)."""
        attempt = self._attempt
        assert attempt is not None
        return (not head.event_stream and head.has_body and 0 <= head.length <= attempt.hold_bytes
                and self._mode is _RAW)

    def _continues(self, head: AnswerHead) -> bool:
        """Whether a continuation's answer can follow the stream the client has."""
        attempt = self._attempt
        assert attempt is not None
        report = self._report
        report.status, report.streamed, report.keepalive_s = head.status, head.event_stream, head.keepalive_s
        if head.status != 200 or not head.event_stream or not head.chunked:
            self._upstream_failed(UpstreamError(f"answered HTTP {head.status} to the continuation", kind="resume"))
            return False
        attempt.accept(head.status)
        self.state, self._mode = State.RELAYING, _EVENTS
        self.fx.attempt_over(Outcome.ANSWERED, report)
        return True

    def _out(self, body: bytes) -> bytes:
        """An answer's body bytes as the client gets them."""
        mode = self._mode
        if mode is _RAW:
            return body
        if mode is _EVENTS:
            relay = self._attempt.relay if self._attempt is not None else None
            assert relay is not None
            return relay.feed(body)
        return b"%x\r\n%b\r\n" % (len(body), body)

    def _answer_complete(self) -> None:
        answer = self._answer
        assert answer is not None
        if self._mode is not _RAW:
            self._finish_body()
        self._report.reusable = answer.reusable
        self.state = State.ANSWERED
        self._end_attempt(Outcome.DONE, reuse=answer.reusable)

    def _upstream_failed(self, error: UpstreamError) -> None:
        self._report.error, self._report.kind = error, error.kind
        if self.state is State.SENT:
            self.state = State.ROUTING
            self._end_attempt(Outcome.FAILED, reuse=False)
            return
        relay = self._attempt.relay if self._mode is _EVENTS and self._attempt is not None else None
        if relay is not None and (relay.log.finish is not None or relay.log.done):
            self._finish_body(add_done=True)  # it broke after its finish: the stream is complete as it is
            self.state = State.ANSWERED
            self._end_attempt(Outcome.DONE, reuse=False)
            return
        if relay is not None and relay.log.resumable() is None and not self._closing:
            self.state = State.ROUTING  # its head is out: the routing layer may start a continuation
            self._report.resumable = True
            self._end_attempt(Outcome.BROKEN, reuse=False)
            return
        self._end_attempt(Outcome.BROKEN, reuse=False)
        self._broken_off(error)

    def _finish_body(self, add_done: bool = False) -> None:
        """The end of a body we frame ourselves: a stream's missing [DONE], the terminator."""
        relay = self._attempt.relay if self._attempt is not None else None
        if self._mode is _EVENTS and relay is not None:
            self.fx.write(relay.end(add_done))
        elif self._mode is _FRAMED:
            self.fx.write(b"0\r\n\r\n")
        self._mode = _RAW

    def _broken_off(self, error: BalancerError) -> None:
        """An answer that began cannot be finished: a stream relayed event by event says so
        in an SSE error event before the close; any other is cut off (no truncated answer
        may look complete)."""
        relay = self._attempt.relay if self._mode is _EVENTS and self._attempt is not None else None
        if relay is None:
            self._close(abort=True)
            return
        self._mode = _RAW
        self.fx.write(relay.error_event(error))
        self._close(abort=False)

    def _end_attempt(self, outcome: Outcome, reuse: bool) -> None:
        """The attempt's backend connection goes back (or closes) and the routing layer hears."""
        answer = self._answer
        if answer is None:
            return
        self._answer = None
        answer.release()
        self.fx.cancel_timer(Timer.UPSTREAM)
        if self._writing_paused:
            self.fx.resume_upstream()  # a slow client's push-back must not follow the connection
        self.fx.release_upstream(reuse, self._report.keepalive_s)
        self.fx.attempt_over(outcome, self._report)
