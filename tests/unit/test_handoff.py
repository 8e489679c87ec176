"""A connection aiohttp serves gives a model request back to the front only once aiohttp has
finished every answer it began (http/handoff.py), driven by hand: no sockets."""
from __future__ import annotations

import asyncio
from typing import Any

from llama_balancer.http.handoff import HandedOff

GET = b"GET /v1/models HTTP/1.1\r\nHost: lb\r\n\r\n"
POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\n\r\n{}"


class FakeHandler(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = b""
        self.transport: Any = None
        self.let_go = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.let_go = True


class FakeTransport:
    def is_closing(self) -> bool:
        return False


def handed_off() -> tuple[HandedOff, FakeHandler, list[bytes]]:
    handler, taken = FakeHandler(), []
    guard = HandedOff(handler, lambda: 30.0, None, lambda transport, data: taken.append(data),
                      lambda line: line.startswith(b"POST /v1/"))
    guard.connection_made(FakeTransport())  # type: ignore[arg-type]
    return guard, handler, taken


async def test_a_model_request_in_a_fresh_read_after_aiohttps_answer_goes_back_to_the_front():
    guard, handler, taken = handed_off()
    guard.data_received(GET)
    guard.request_started()
    guard.request_done(True)
    guard.data_received(POST)
    assert handler.got == GET and taken == [POST] and handler.let_go


async def test_a_model_request_before_aiohttps_task_ended_waits_for_it_then_goes_back():
    """The client read the answer and sent the next request before the task that wrote the
    answer had ended (a client in the same process does): never aiohttp's, and not lost."""
    guard, handler, taken = handed_off()
    guard.data_received(GET)
    guard.request_started()
    guard.data_received(POST[:20])
    guard.data_received(POST[20:])
    assert handler.got == GET and taken == []
    guard.request_done(True)
    assert taken == [POST] and handler.let_go


async def test_a_model_request_after_an_answer_that_closes_is_not_taken_back():
    guard, handler, taken = handed_off()
    guard.data_received(GET)
    guard.request_started()
    guard.data_received(POST)
    guard.request_done(False)
    assert taken == [] and not handler.let_go


async def test_another_aiohttp_request_passes_straight_through():
    guard, handler, taken = handed_off()
    guard.data_received(GET)
    guard.data_received(GET)
    assert handler.got == GET + GET and taken == []
