"""The exchange state machine, played as scripts of events (mitmproxy's playbook tests):
client bytes, backend bytes, timers and closes in; the recorded effects out. No sockets."""
from __future__ import annotations

import gc
from typing import Any

import pytest

from llama_balancer.core.errors import BalancerError, NoBackend, UpstreamError
from llama_balancer.core.usage import UsageTail
from llama_balancer.h1.answers import AnswerReader
from llama_balancer.h1.contract import Attempt, Limits, Outcome, State, Timer
from llama_balancer.h1.exchange import ExchangeMachine
from llama_balancer.h1.requests import RequestHead

CHAT = b'{"model":"m","messages":[]}'
POST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: %d\r\n\r\n" % len(CHAT)) + CHAT
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}"


class FakeEffects:
    """Records every effect as a tuple, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.log.append((name, *args))
        return record

    def names(self) -> list[str]:
        return [entry[0] for entry in self.log]

    def written(self) -> bytes:
        return b"".join(entry[1] for entry in self.log if entry[0] == "write")

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [entry for entry in self.log if entry[0] == name]

    def clear(self) -> None:
        self.log.clear()


def machine(native: bool = True, **limits: Any) -> tuple[ExchangeMachine, FakeEffects]:
    fx = FakeEffects()
    options = Limits(**{"max_body_bytes": 1000, "header_timeout_s": 5.0, "idle_timeout_s": 9.0, **limits})
    m = ExchangeMachine(fx, lambda: options, lambda head: native and head.method == "POST", lambda: "rid")
    return m, fx


def attempt(last_try: bool = False, idle: float | None = 30.0, tail: UsageTail | None = None) -> Attempt:
    def accept(status: int) -> bool:
        return last_try or status not in (502, 503, 504)
    return Attempt(b"UPSTREAM REQUEST", accept, "rid", idle, tail=tail)


def served(m: ExchangeMachine, fx: FakeEffects, data: bytes = POST) -> RequestHead:
    m.client_data(data)
    (entry,) = fx.of("serve")
    assert m.state is State.ROUTING
    return entry[1]


def outcomes(fx: FakeEffects) -> list[Outcome]:
    return [entry[1] for entry in fx.of("attempt_over")]


# -- requests in


def test_a_content_length_request_is_served_with_its_body():
    m, fx = machine()
    head = served(m, fx)
    assert (head.method, head.path, head.version, head.keep_alive) == ("POST", "/v1/chat/completions", "1.1", True)
    assert fx.of("serve")[0][2] == CHAT and fx.of("serve")[0][3] is None
    assert ("cancel_timer", Timer.HEAD) in fx.log


def test_a_request_split_across_reads_waits_for_its_last_byte():
    m, fx = machine()
    for i in range(0, len(POST), 7):
        m.client_data(POST[i:i + 7])
    assert fx.of("serve")[0][2] == CHAT


def test_a_chunked_request_body_is_served_dechunked():
    m, fx = machine()
    m.client_data(b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n")
    head, body = fx.of("serve")[0][1:3]
    assert head.chunked and body == b"hello!"


def test_expect_100_continue_gets_its_interim_answer_before_the_body():
    m, fx = machine()
    m.client_data(b"POST /v1/completions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert fx.written() == b"HTTP/1.1 100 Continue\r\n\r\n" and not fx.of("serve")
    m.client_data(b"{}")
    assert fx.of("serve")[0][2] == b"{}"


def test_a_request_that_is_not_ours_hands_off_the_connection_with_its_bytes_as_sent():
    m, fx = machine()
    raw = b"GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n"
    m.client_data(raw)
    assert fx.of("hand_off") == [("hand_off", raw)] and m.state is State.HANDED_OFF
    m.client_data(b"more")  # aiohttp's now
    assert len(fx.of("hand_off")) == 1


def test_a_request_after_ours_in_a_later_read_can_still_be_handed_off():
    m, fx = machine()
    run_plain_exchange(m, fx)
    m.client_data(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert fx.of("hand_off") == [("hand_off", b"GET /metrics HTTP/1.1\r\n\r\n")]


def test_a_foreign_request_pipelined_in_one_read_behind_ours_closes_the_connection_after_our_answer():
    m, fx = machine()
    m.client_data(POST + b"GET /metrics HTTP/1.1\r\n\r\n")
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(OK, 0.0)
    m.request_done()
    assert not fx.of("hand_off") and fx.log[-1] == ("close", False) and m.state is State.CLOSED


def test_pipelined_requests_are_served_one_after_the_other():
    m, fx = machine()
    m.client_data(POST + POST)
    assert len(fx.of("serve")) == 1
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(OK, 0.0)
    m.client_data(POST)  # a third, while the first is being finished
    m.request_done()
    assert len(fx.of("serve")) == 2 and m.state is State.ROUTING
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(OK, 0.0)
    m.request_done()
    assert len(fx.of("serve")) == 3


@pytest.mark.parametrize("raw, status", [
    (b"POST /v1/completions HTTP/1.1\r\nContent-Length: \xc2\xb2\r\n\r\n", 400),  # a Unicode digit
    (b"POST /v1/completions HTTP/1.1\r\nX-A: a\nSet-Cookie: x\r\n\r\n", 400),  # a bare LF
    (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n", 400),
    (b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", 400),
    (b"GET /\r\n", 400),  # HTTP/0.9: at once, not when the head deadline ends
    (b"\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET /\x01 HTTP/1.1\r\n\r\n", 400),
    (b"POST /v1/completions HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
])
def test_a_request_llhttp_refuses_gets_its_error_and_a_close(raw, status):
    m, fx = machine()
    m.client_data(raw)
    assert fx.written().startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close" in fx.written() and fx.log[-1] == ("close", False)
    assert len(fx.of("refused")) == 1 and not fx.of("serve") and m.state is State.CLOSED


def test_a_body_over_the_limit_is_refused_without_reading_it():
    m, fx = machine(max_body_bytes=10)
    m.client_data(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
    refusal = fx.of("serve")[0][3]
    assert isinstance(refusal, BalancerError) and refusal.status == 413
    m.fail(refusal, "rid")
    assert b"Connection: close" in fx.written()
    m.request_done()
    assert m.state is State.CLOSED


def test_a_chunked_body_growing_over_the_limit_is_refused():
    m, fx = machine(max_body_bytes=10)
    m.client_data(b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n")
    assert fx.of("serve")[0][3].status == 413


def test_a_head_that_takes_too_long_gets_408_and_a_close():
    m, fx = machine()
    m.client_data(b"POST /v1/completions HTTP/1.1\r\n")
    assert ("set_timer", Timer.HEAD, 5.0) in fx.log
    m.timer_fired(Timer.HEAD, 5.0)
    assert fx.written().startswith(b"HTTP/1.1 408 ") and m.state is State.CLOSED


def test_an_idle_keep_alive_connection_closes_when_its_timer_fires():
    m, fx = machine()
    assert fx.log == [("set_timer", Timer.IDLE, 9.0)]
    m.timer_fired(Timer.IDLE, 9.0)
    assert fx.log[-1] == ("close", False)


def test_a_stale_timer_does_nothing():
    m, fx = machine()
    served(m, fx)
    fx.clear()
    m.timer_fired(Timer.IDLE, 100.0)
    m.timer_fired(Timer.HEAD, 100.0)
    assert fx.log == [] and m.state is State.ROUTING


# -- answers out


def run_plain_exchange(m: ExchangeMachine, fx: FakeEffects) -> None:
    served(m, fx)
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(OK, 0.0)
    m.request_done()
    fx.clear()


def test_an_ended_attempt_leaves_no_answer_reader_for_the_garbage_collector():
    """A reader and its llhttp parser refer to each other; unbroken, every request left a cycle
    that only a collection freed (about 7 % of a request's CPU in bench/path.py)."""
    m, fx = machine()
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            run_plain_exchange(m, fx)
        served(m, fx)
        m.begin_attempt(attempt(), 0.0)
        m.upstream_data(UNAVAILABLE, 0.0)  # retried elsewhere
        m.begin_attempt(attempt(), 0.0)
        m.upstream_data(OK, 0.0)
        m.request_done()
        left = [o for o in gc.get_objects() if isinstance(o, AnswerReader)]
    finally:
        gc.enable()
    assert outcomes(fx) == [Outcome.RETRY, Outcome.ANSWERED, Outcome.DONE] and left == []


def test_a_released_machine_ignores_whatever_comes_after():
    m, fx = machine()
    run_plain_exchange(m, fx)
    m.release()
    m.client_data(POST)
    m.timer_fired(Timer.IDLE, 99.0)
    m.client_gone()
    m.request_done()
    assert fx.log == [] and m.state is State.CLOSED


def test_an_answer_is_relayed_with_our_head_and_the_connection_goes_back_to_the_pool():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(), 1.0)
    assert fx.log[-1] == ("send_upstream", b"UPSTREAM REQUEST") and m.state is State.SENT
    m.upstream_data(OK[:20], 1.1)
    assert m.state is State.SENT and not fx.of("write")
    m.upstream_data(OK[20:], 1.2)
    written = fx.written()
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and b"X-Request-Id: rid\r\n" in written
    assert b"Content-Length: 7\r\n" in written and written.endswith(b'\r\n\r\n{"a":1}')
    assert outcomes(fx) == [Outcome.ANSWERED, Outcome.DONE] and fx.of("release_upstream") == [("release_upstream", True, None)]
    report = fx.of("attempt_over")[-1][2]
    assert (report.status, report.first_byte, report.reusable) == (200, 1.2, True)
    m.request_done()
    assert m.state is State.IDLE and fx.log[-1] == ("set_timer", Timer.IDLE, 9.0)


def test_a_stream_passes_chunk_by_chunk_unchanged_and_its_payload_feeds_the_usage_tail():
    m, fx = machine()
    served(m, fx)
    tail: list[bytes] = []
    m.begin_attempt(attempt(tail=UsageTail(tail)), 0.0)
    m.upstream_data(SSE_HEAD, 0.0)
    assert b"Transfer-Encoding: chunked" in fx.written()
    fx.clear()
    for event in (b"data: 1\n\n", b"data: [DONE]\n\n"):
        chunk = b"%x\r\n%s\r\n" % (len(event), event)
        m.upstream_data(chunk, 0.0)
        assert fx.log[-1] == ("write", chunk)
    m.upstream_data(b"0\r\n\r\n", 0.0)
    assert fx.of("write")[-1] == ("write", b"0\r\n\r\n") and outcomes(fx) == [Outcome.DONE]
    assert b"".join(tail[1:]) == b"data: 1\n\ndata: [DONE]\n\n" and tail[0] == b"data: 1\n\n"


def test_an_http10_client_gets_a_chunked_stream_dechunked_and_ended_by_the_close():
    m, fx = machine()
    served(m, fx, b"POST /v1/completions HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(SSE_HEAD + b"9\r\ndata: 1\n\n\r\n0\r\n\r\n", 0.0)
    written = fx.written()
    assert b"Transfer-Encoding" not in written and b"Connection: close" in written
    assert written.endswith(b"\r\n\r\ndata: 1\n\n")
    m.request_done()
    assert fx.log[-1] == ("close", False)


def test_a_retryable_status_before_the_last_try_ends_the_attempt_unseen():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(UNAVAILABLE, 0.0)
    assert outcomes(fx) == [Outcome.RETRY] and fx.of("attempt_over")[0][2].kind == "http_503"
    assert not fx.of("write") and fx.of("release_upstream") == [("release_upstream", False, None)]
    assert m.state is State.ROUTING
    m.begin_attempt(attempt(), 0.0)  # the routing layer tries the next backend
    m.upstream_data(OK, 0.0)
    assert outcomes(fx)[-1] is Outcome.DONE and fx.written().startswith(b"HTTP/1.1 200")


def test_the_last_try_relays_a_retryable_status_as_it_is():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(last_try=True), 0.0)
    m.upstream_data(UNAVAILABLE, 0.0)
    assert fx.written().startswith(b"HTTP/1.1 503 ") and outcomes(fx) == [Outcome.ANSWERED, Outcome.DONE]


def test_a_backend_reset_before_the_answer_fails_the_attempt_for_a_retry():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(), 0.0)
    m.upstream_closed("reset by peer")
    report = fx.of("attempt_over")[0][2]
    assert outcomes(fx) == [Outcome.FAILED] and report.kind == "reset" and not report.got_bytes
    assert m.state is State.ROUTING and not fx.of("write")


def test_a_backend_reset_mid_answer_cuts_the_client_off_and_nothing_is_retried():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(SSE_HEAD + b"9\r\ndata: 1\n\n\r\n", 0.0)
    m.upstream_closed()
    assert outcomes(fx) == [Outcome.ANSWERED, Outcome.BROKEN] and fx.log[-1] == ("close", True)
    assert m.state is State.CLOSED
    m.fail(UpstreamError("x", kind="reset"), "rid")  # the routing layer hears late: nothing more
    assert fx.log[-1] == ("close", True)


def test_a_close_delimited_answer_ends_with_the_close():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc", 0.0)
    m.upstream_closed()
    assert outcomes(fx) == [Outcome.ANSWERED, Outcome.DONE] and b"Connection: close" in fx.written()
    assert fx.of("release_upstream") == [("release_upstream", False, None)]


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nX-A: a\nSet-Cookie: x\r\nContent-Length: 0\r\n\r\n",  # header injection
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n",
    b"HTTX/1.1 200 OK\r\n\r\n",
])
def test_a_malformed_answer_is_never_relayed(answer):
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(answer, 0.0)
    over = fx.of("attempt_over")
    if over[0][1] is Outcome.FAILED:  # refused in its head: nothing reached the client
        assert not fx.of("write") and over[0][2].kind == "protocol"
    else:  # refused in its body, after the head went out: the client is cut off
        assert outcomes(fx) == [Outcome.ANSWERED, Outcome.BROKEN] and fx.log[-1] == ("close", True)
    assert b"Set-Cookie" not in fx.written()


def test_bytes_past_a_content_length_end_are_cut_and_the_connection_not_reused():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(OK + b"HTTP/1.1 200 OK\r\n\r\n", 0.0)
    assert fx.written().endswith(b'{"a":1}') and fx.of("release_upstream") == [("release_upstream", False, None)]


def test_bytes_past_a_chunked_end_in_the_same_read_break_the_answer():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(SSE_HEAD, 0.0)
    m.upstream_data(b"0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 0.0)
    assert outcomes(fx)[-1] is Outcome.BROKEN and fx.log[-1] == ("close", True)


def test_interim_answers_from_the_backend_are_not_relayed():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + OK, 0.0)
    assert fx.written().startswith(b"HTTP/1.1 200 OK") and b"Link" not in fx.written()


def test_a_silent_backend_times_out_before_the_answer_and_the_timer_rearms_while_bytes_come():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(idle=10.0), 0.0)
    assert ("set_timer", Timer.UPSTREAM, 10.0) in fx.log
    m.upstream_data(b"HTTP/1.1 200", 4.0)
    m.timer_fired(Timer.UPSTREAM, 10.0)
    assert fx.log[-1] == ("set_timer", Timer.UPSTREAM, 4.0) and m.state is State.SENT
    m.timer_fired(Timer.UPSTREAM, 14.0)
    report = fx.of("attempt_over")[0][2]
    assert outcomes(fx) == [Outcome.FAILED] and report.kind == "timeout" and report.error.status == 504


def test_a_backend_silent_mid_stream_breaks_the_answer():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(idle=10.0), 0.0)
    m.upstream_data(SSE_HEAD, 0.0)
    m.timer_fired(Timer.UPSTREAM, 10.0)
    assert outcomes(fx) == [Outcome.ANSWERED, Outcome.BROKEN] and fx.log[-1] == ("close", True)


def test_a_slow_client_pauses_the_backend_and_resumes_it():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(SSE_HEAD, 0.0)
    m.client_writable(False)
    assert fx.log[-1] == ("pause_upstream",)
    m.client_writable(True)
    assert fx.log[-1] == ("resume_upstream",)


def test_a_client_paused_before_the_attempt_pauses_the_backend_from_the_start_and_not_after():
    m, fx = machine()
    served(m, fx)
    m.client_writable(False)
    m.begin_attempt(attempt(), 0.0)
    assert fx.names()[-2:] == ["pause_upstream", "send_upstream"]
    m.upstream_data(OK, 0.0)
    names = fx.names()
    assert names.index("resume_upstream") < names.index("release_upstream")  # the pool gets it reading


def test_bytes_pipelined_past_the_read_ahead_pause_reading_until_the_answer_is_out():
    m, fx = machine(read_ahead=100)
    served(m, fx)
    m.client_data(b"x" * 101)
    assert fx.log[-1] == ("pause_reading",)
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(OK, 0.0)
    m.request_done()
    assert ("resume_reading",) in fx.log


@pytest.mark.parametrize("where", ["idle", "receiving", "routing", "sent", "relaying"])
def test_a_client_gone_at_any_state_gives_everything_back(where):
    m, fx = machine()
    if where != "idle":
        m.client_data(POST[:10] if where == "receiving" else POST)
    if where in ("sent", "relaying"):
        m.begin_attempt(attempt(), 0.0)
    if where == "relaying":
        m.upstream_data(SSE_HEAD, 0.0)
    fx.clear()
    m.client_gone()
    assert m.state is State.CLOSED
    assert {entry[1] for entry in fx.of("cancel_timer")} == set(Timer)
    if where in ("sent", "relaying"):
        assert fx.of("release_upstream") == [("release_upstream", False, None)]
        assert outcomes(fx) == [Outcome.CLIENT_GONE]
    else:
        assert not fx.of("release_upstream") and not fx.of("attempt_over")
    m.upstream_data(OK, 0.0)
    m.request_done()
    assert not fx.of("write") and not fx.of("close")


def test_a_routing_failure_answers_an_error_and_the_connection_stays_open():
    m, fx = machine()
    served(m, fx)
    m.fail(NoBackend("no backend serves 'm'"), "rid")
    written = fx.written()
    assert written.startswith(b"HTTP/1.1 503 ") and b'"code":"no_backend"' in written
    assert b"Connection: close" not in written
    m.request_done()
    assert m.state is State.IDLE


def test_a_routing_failure_during_an_attempt_gives_the_backend_connection_back():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(attempt(), 0.0)
    m.fail(BalancerError("internal"), "rid")
    assert fx.of("release_upstream") == [("release_upstream", False, None)] and outcomes(fx) == [Outcome.FAILED]
    assert fx.written().startswith(b"HTTP/1.1 500 ")


def test_connection_close_from_the_client_closes_after_the_answer():
    m, fx = machine()
    served(m, fx, POST.replace(b"Host: lb\r\n", b"Host: lb\r\nConnection: close\r\n"))
    m.begin_attempt(attempt(), 0.0)
    m.upstream_data(OK, 0.0)
    assert b"Connection: close" in fx.written()
    m.request_done()
    assert fx.log[-1] == ("close", False)


# -- a stream relayed event by event (resume)

from llama_balancer.core.resume import StreamLog  # noqa: E402
from llama_balancer.h1.relay import EventRelay  # noqa: E402

ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}],"id":"c1","created":1,"model":"m"}\n\n'
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}],"id":"c1","created":1,"model":"m"}\n\n'
FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"id":"c1","created":1,"model":"m"}\n\n'
CONTINUED = b'data: {"choices":[{"text":"y","index":0,"finish_reason":null}],"id":"c2","created":2,"model":"m"}\n\n'


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def relayed(log: StreamLog | None = None) -> tuple[ExchangeMachine, FakeEffects, EventRelay]:
    """A machine relaying a stream event by event, its role and first token sent."""
    m, fx = machine()
    served(m, fx)
    relay = EventRelay(log or StreamLog("chat"))
    m.begin_attempt(Attempt(b"UPSTREAM REQUEST", lambda status: True, "rid", 30.0, relay=relay), 0.0)
    m.upstream_data(SSE_HEAD + chunk(ROLE) + chunk(TOKEN), 0.0)
    return m, fx, relay


def test_a_relayed_stream_goes_out_in_whole_events_each_in_a_chunk_of_ours():
    m, fx, relay = relayed()
    written = fx.written()
    assert written.endswith(chunk(ROLE) + chunk(TOKEN)) and b"Transfer-Encoding: chunked" in written
    fx.clear()
    m.upstream_data(chunk(TOKEN[:20]), 0.0)  # half an event: held back
    assert fx.written() == b""
    m.upstream_data(chunk(TOKEN[20:]) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n", 0.0)
    assert fx.written() == chunk(TOKEN) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    assert outcomes(fx) == [Outcome.DONE] and m.state is State.ANSWERED and relay.log.generated == 2


def test_a_stream_broken_at_any_byte_goes_back_to_routing_with_whole_events_sent_and_the_connection_open():
    m, fx, relay = relayed()
    fx.clear()
    m.upstream_data(chunk(TOKEN)[:30], 0.0)  # the backend dies mid-event
    m.upstream_closed("reset")
    assert fx.written() == b"" and not fx.of("close")
    (over,) = fx.of("attempt_over")
    assert over[1] is Outcome.BROKEN and over[2].resumable and m.resuming and m.state is State.ROUTING
    assert relay.log.generated == 1 and not m.may_answer


def test_a_continuation_follows_in_the_same_stream_without_a_second_head():
    m, fx, relay = relayed()
    m.upstream_closed("reset")
    relay.resume()
    fx.clear()
    m.begin_attempt(Attempt(b"CONTINUATION", lambda status: True, "rid", 30.0, relay=relay), 1.0)
    assert fx.of("send_upstream") == [("send_upstream", b"CONTINUATION")]
    m.upstream_data(SSE_HEAD + chunk(CONTINUED) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n", 1.0)
    written = fx.written()
    assert b"HTTP/1.1" not in written and written.endswith(b"0\r\n\r\n")
    assert b'"content":"y"' in written and b'"id":"c1"' in written and b'"c2"' not in written
    assert outcomes(fx) == [Outcome.ANSWERED, Outcome.DONE] and relay.log.text == "xy"


def test_a_continuation_that_is_not_a_stream_fails_and_the_router_may_try_another():
    m, fx, relay = relayed()
    m.upstream_closed("reset")
    relay.resume()
    fx.clear()
    m.begin_attempt(Attempt(b"CONTINUATION", lambda status: True, "rid", 30.0, relay=relay), 1.0)
    m.upstream_data(UNAVAILABLE, 1.0)
    (over,) = fx.of("attempt_over")
    assert over[1] is Outcome.FAILED and "HTTP 503" in over[2].error.message and fx.written() == b""
    m.fail(UpstreamError("no server could continue it", kind="resume"), "rid")  # the router gives up
    written = fx.written()
    size, _, event = written.partition(b"\r\n")
    assert event.startswith(b'data: {"error"') and len(event) == int(size, 16) + 2 and b"no server could" in event
    assert fx.log[-1] == ("close", False) and m.state is State.CLOSED  # not aborted: the event must arrive


def test_a_stream_that_cannot_be_resumed_ends_with_an_error_event_and_a_close_without_the_terminator():
    log = StreamLog("chat")
    log.blocked = "the request asks for tools"
    m, fx, _ = relayed(log)
    fx.clear()
    m.upstream_closed("reset")
    written = fx.written()
    assert b'data: {"error"' in written and not written.endswith(b"0\r\n\r\n")
    assert outcomes(fx) == [Outcome.BROKEN] and not fx.of("attempt_over")[0][2].resumable
    assert fx.log[-1] == ("close", False) and m.state is State.CLOSED


def test_a_stream_broken_after_its_finish_is_complete_as_it_is():
    m, fx, _ = relayed()
    m.upstream_data(chunk(FINISH), 0.0)
    fx.clear()
    m.upstream_closed("reset")
    assert fx.written() == chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    assert outcomes(fx) == [Outcome.DONE] and m.state is State.ANSWERED
    m.request_done()
    assert m.state is State.IDLE  # the stream ended well: the connection is kept


def test_a_stalled_stream_is_resumed_like_a_broken_one():
    m, fx, _ = relayed()
    fx.clear()
    m.timer_fired(Timer.UPSTREAM, 31.0)
    (over,) = fx.of("attempt_over")
    assert over[1] is Outcome.BROKEN and over[2].resumable and over[2].kind == "timeout" and m.resuming


def test_the_client_leaving_while_its_stream_waits_for_a_continuation_ends_everything():
    m, fx, _ = relayed()
    m.upstream_closed("reset")
    fx.clear()
    m.client_gone()
    assert m.state is State.CLOSED and not fx.of("attempt_over") and not fx.of("write")


def test_a_stream_relay_that_did_not_happen_reframes_a_chunked_answer():
    m, fx = machine()
    served(m, fx)
    relay = EventRelay(StreamLog("chat"))
    m.begin_attempt(Attempt(b"UPSTREAM REQUEST", lambda status: True, "rid", 30.0, relay=relay), 0.0)
    m.upstream_data(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + chunk(b'{"error":1}') + b"0\r\n\r\n", 0.0)
    assert fx.written().endswith(b"\r\n\r\n" + chunk(b'{"error":1}') + b"0\r\n\r\n")
    assert outcomes(fx) == [Outcome.ANSWERED, Outcome.DONE]


def held_attempt(last_try: bool = False) -> Attempt:
    def accept(status: int) -> bool:
        return last_try or status not in (502, 503, 504)
    return Attempt(b"UPSTREAM REQUEST", accept, "rid", 30.0, hold_bytes=100)


def test_a_plain_answer_is_read_whole_before_anything_reaches_the_client():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(held_attempt(), 0.0)
    m.upstream_data(OK[:-3], 0.0)
    assert fx.written() == b"" and m.state is State.SENT
    m.upstream_data(OK[-3:], 0.0)
    assert fx.written().endswith(b'\r\n\r\n{"a":1}') and outcomes(fx) == [Outcome.ANSWERED, Outcome.DONE]


def test_a_plain_answer_broken_mid_body_fails_before_the_first_byte_so_it_is_retried_whole():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(held_attempt(), 0.0)
    m.upstream_data(OK[:-3], 0.0)
    m.upstream_closed("reset")
    (over,) = fx.of("attempt_over")
    assert over[1] is Outcome.FAILED and over[2].got_bytes and fx.written() == b"" and m.state is State.ROUTING
    m.begin_attempt(held_attempt(), 1.0)  # the router's next try
    m.upstream_data(OK, 1.0)
    assert fx.written().endswith(b'{"a":1}') and outcomes(fx)[-1] is Outcome.DONE


def test_a_held_answer_with_a_retryable_status_is_retried_and_a_large_one_is_not_held():
    m, fx = machine()
    served(m, fx)
    m.begin_attempt(held_attempt(), 0.0)
    m.upstream_data(UNAVAILABLE, 0.0)
    assert outcomes(fx) == [Outcome.RETRY] and fx.written() == b""
    m.begin_attempt(held_attempt(), 1.0)
    big = b"x" * 200
    m.upstream_data(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n" + big[:50], 1.0)
    assert fx.written().endswith(big[:50])  # over hold_bytes: relayed as it comes
