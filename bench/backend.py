"""A minimal OpenAI-shaped backend for the benchmark: raw asyncio protocol on uvloop.

It answers only what the bench needs, with canned bytes, so that it is never the
bottleneck (the sim is a faithful llama-server, and far too heavy for this):

- ``POST /v1/chat/completions``: a canned chat completion (Content-Length), or with
  ``"stream": true`` an SSE stream, one HTTP chunk per event like llama-server: ``max_tokens``
  (or ``max_completion_tokens``) delta events (default 32), the first at once and the rest
  ``metadata.bench_delay_ms`` (or a top-level ``bench_delay_ms``) apart (default 5), then
  ``data: [DONE]``. The bench sends the delay inside ``metadata`` because sglang-router
  rewrites the body: it drops fields it does not know and renames ``max_tokens``.
- ``GET /llmhealth`` (idle) and ``GET /v1/models`` for the balancer's pollers; ``GET /health``
  (``{"status":"ok"}``, like llama-server) for sglang-router's.

Usage: ``python bench/backend.py --port P [--port P2 ...]``; prints ``ready`` once listening.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import orjson

MODEL = "bench-model"

_COMPLETION = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello! This is a canned benchmark answer."}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
})
_HEALTH = b'{"status":"idle","gpu_util_max5s":0.0,"window_seconds":5}'
_HEALTH_OK = b'{"status":"ok"}'
_MODELS = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})


def _event(i: int) -> bytes:
    data = orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                         "model": MODEL, "choices": [{"index": 0, "delta": {"content": f"tok{i} "},
                                                      "finish_reason": None}]})
    event = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


_EVENTS = [_event(i) for i in range(256)]
_DONE = b"data: [DONE]\n\n"
_DONE_CHUNK = b"%x\r\n%s\r\n0\r\n\r\n" % (len(_DONE), _DONE)
_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


def _reply(status: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (status, ctype, len(body), body)


_REPLY_COMPLETION = _reply(b"200 OK", _COMPLETION)
_REPLY_HEALTH = _reply(b"200 OK", _HEALTH)
_REPLY_HEALTH_OK = _reply(b"200 OK", _HEALTH_OK)
_REPLY_MODELS = _reply(b"200 OK", _MODELS)
_REPLY_404 = _reply(b"404 Not Found", b'{"error":{"message":"not found","type":"not_found_error","code":404}}')


class BenchHTTP(asyncio.Protocol):
    """HTTP/1.1 keep-alive; one request at a time per connection (no pipelining needed)."""

    __slots__ = ("transport", "buf", "timer", "streaming", "left", "delay", "sent", "loop")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None
        self.streaming = False
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        while not self.streaming:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17:stop if stop >= 0 else None])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            self._handle(head, body)

    def _handle(self, head: bytes, body: bytes) -> None:
        line = head[:head.find(b"\r\n")] if b"\r\n" in head else head
        method, _, rest = line.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        transport = self.transport
        if transport is None:
            return
        if method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                payload = {}
            if payload.get("stream"):
                delay = (payload.get("metadata") or {}).get("bench_delay_ms", payload.get("bench_delay_ms", 5))
                self._start_stream(int(payload.get("max_tokens") or payload.get("max_completion_tokens") or 32),
                                   float(delay) / 1000.0)
            else:
                transport.write(_REPLY_COMPLETION)
        elif path == b"/llmhealth":
            transport.write(_REPLY_HEALTH)
        elif path == b"/v1/models":
            transport.write(_REPLY_MODELS)
        elif path == b"/health":
            transport.write(_REPLY_HEALTH_OK)
        else:
            transport.write(_REPLY_404)

    def _start_stream(self, events: int, delay: float) -> None:
        self.streaming = True
        self.left = events
        self.delay = delay
        self.sent = 0
        assert self.transport is not None
        self.transport.write(_STREAM_HEAD + _EVENTS[0])
        self.sent = 1
        self._schedule()

    def _schedule(self) -> None:
        if self.sent >= self.left:
            self._finish()
        else:
            self.timer = self.loop.call_later(self.delay, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        self.transport.write(_EVENTS[self.sent % len(_EVENTS)])
        self.sent += 1
        self._schedule()

    def _finish(self) -> None:
        if self.transport is not None:
            self.transport.write(_DONE_CHUNK)
        self.streaming = False
        if self.buf:
            self.data_received(b"")


async def serve(ports: list[int], host: str, backlog: int) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(BenchHTTP, host, port, backlog=backlog, reuse_address=True)
               for port in ports]
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--backlog", type=int, default=16384)
    args = parser.parse_args()
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        runner(serve(args.port, args.host, args.backlog))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
