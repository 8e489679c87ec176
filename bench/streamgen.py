"""Streaming load generator: raw asyncio HTTP/1.1 client (uvloop), one JSON line of results.

Each worker keeps one keep-alive connection and sends ``POST /v1/chat/completions`` with
``"stream": true``. Per stream it measures the time to the first SSE ``data:`` event (TTFT)
and to the end of the body, counts the events and checks the last one is ``data: [DONE]``.
Anything else -- refused connection, non-200, a body cut short, too few events, no
``[DONE]`` -- counts as an error, by kind.

Modes: ``--duration D`` (workers loop until D seconds passed; S2) or ``--once`` (every worker
runs exactly one stream, its start spread over ``--ramp`` seconds; S3/S4). Several processes
can share one start time with ``--start-at`` (a time.time() value).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter

import orjson


class StreamError(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class StreamClient(asyncio.Protocol):
    """One connection; ``request()`` sends one stream and resolves when its body ended."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.future: asyncio.Future | None = None
        self.buf = b""
        self.got_head = False
        self.keep_alive = True

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        if self.future is not None and not self.future.done():
            self.future.set_exception(StreamError("reset" if self.got_head else "closed_before_head"))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.future is None or self.future.done():
            return
        self.buf += data
        if not self.got_head:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            self.buf = self.buf[end + 4:]
            self.got_head = True
            self.status = int(head[9:12])
            self.chunked = b"transfer-encoding: chunked" in head
            at = head.find(b"content-length:")
            self.remaining = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) \
                if at >= 0 else -1
            self.keep_alive = b"connection: close" not in head
        if self.chunked:
            self._dechunk(now)
        else:
            self._feed(self.buf, now)
            self.remaining -= len(self.buf)
            self.buf = b""
            if self.remaining == 0:
                self._complete(now)

    # -- body --
    def _dechunk(self, now: float) -> None:
        buf = self.buf
        pos = 0
        while True:
            if self.chunk_left > 0:
                take = min(self.chunk_left, len(buf) - pos)
                if take <= 0:
                    break
                self._feed(buf[pos:pos + take], now)
                pos += take
                self.chunk_left -= take
                if self.chunk_left == 0:
                    self.chunk_left = -2  # expect CRLF
                continue
            if self.chunk_left == -2:
                if len(buf) - pos < 2:
                    break
                pos += 2
                self.chunk_left = 0
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)  # trailers, normally none
                if end < 0:
                    break
                pos = end + 4
                self.buf = buf[pos:]
                self._complete(now)
                return
            pos = eol + 2
            self.chunk_left = size
        self.buf = buf[pos:]

    def _feed(self, data: bytes, now: float) -> None:
        sse = self.sse + data if self.sse else data
        start = 0
        while True:
            sep = sse.find(b"\n\n", start)
            if sep < 0:
                break
            event = sse[start:sep]
            start = sep + 2
            if event.startswith(b"data:"):
                self.events += 1
                if self.ttft < 0:
                    self.ttft = now - self.t0
                self.last = event
        self.sse = sse[start:]

    def _complete(self, now: float) -> None:
        fut = self.future
        self.future = None
        if fut is None or fut.done():
            return
        if self.status != 200:
            fut.set_exception(StreamError(f"http_{self.status}"))
        elif self.last.strip() != b"data: [DONE]":
            fut.set_exception(StreamError("no_done"))
        elif self.events != self.expect_events:
            fut.set_exception(StreamError("event_count"))
        else:
            fut.set_result((self.ttft, now - self.t0))

    # -- API --
    def request(self, payload: bytes, expect_events: int) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        self.future = loop.create_future()
        self.got_head = False
        self.chunk_left = 0
        self.sse = b""
        self.events = 0
        self.last = b""
        self.ttft = -1.0
        self.buf = b""
        self.expect_events = expect_events
        self.t0 = time.perf_counter()
        if self.transport is None:
            self.future.set_exception(StreamError("closed"))
        else:
            self.transport.write(payload)
        return self.future


def build_request(port: int, chunks: int, delay_ms: float) -> bytes:
    body = orjson.dumps({
        "model": "bench-model", "stream": True, "max_tokens": chunks,
        "metadata": {"bench_delay_ms": f"{delay_ms:g}"},  # OpenAI's metadata: string values
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Say hello to the benchmark."}],
    })
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


class Results:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.total: list[float] = []
        self.errors: Counter[str] = Counter()
        self.first_start = float("inf")
        self.last_end = 0.0


async def _connect(loop: asyncio.AbstractEventLoop, port: int, timeout: float) -> StreamClient:
    try:
        _, proto = await asyncio.wait_for(loop.create_connection(StreamClient, "127.0.0.1", port), timeout)
    except asyncio.TimeoutError:
        raise StreamError("connect_timeout") from None
    except OSError:
        raise StreamError("connect") from None
    return proto  # type: ignore[return-value]


async def worker(port: int, payload: bytes, expect: int, results: Results, deadline: float | None,
                 delay: float, stream_timeout: float) -> None:
    loop = asyncio.get_running_loop()
    if delay > 0:
        await asyncio.sleep(delay)
    client: StreamClient | None = None
    while True:
        started = time.perf_counter()
        results.first_start = min(results.first_start, started)
        try:
            if client is None or client.transport is None:
                client = await _connect(loop, port, stream_timeout)
            ttft, total = await asyncio.wait_for(client.request(payload, expect), stream_timeout)
            results.ttft.append(ttft)
            results.total.append(total)
            if not client.keep_alive and client.transport is not None:
                client.transport.close()
        except StreamError as exc:
            results.errors[exc.kind] += 1
            client = _drop(client)
        except asyncio.TimeoutError:
            results.errors["stream_timeout"] += 1
            client = _drop(client)
        results.last_end = max(results.last_end, time.perf_counter())
        if deadline is None or time.perf_counter() >= deadline:
            break
    if client is not None and client.transport is not None:
        client.transport.close()


def _drop(client: StreamClient | None) -> None:
    if client is not None and client.transport is not None:
        client.transport.abort()
    return None


async def run(args: argparse.Namespace) -> dict:
    payload = build_request(args.port, args.chunks, args.delay_ms)
    expect = args.chunks + 1  # the deltas and [DONE]
    results = Results()
    if args.start_at:
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
    t0 = time.perf_counter()
    deadline = None if args.once else t0 + args.duration
    tasks = [
        asyncio.ensure_future(worker(args.port, payload, expect, results, deadline,
                                     args.ramp * i / max(1, args.concurrency) if args.once else 0.0,
                                     args.stream_timeout))
        for i in range(args.concurrency)
    ]
    await asyncio.gather(*tasks)
    elapsed = max(1e-9, results.last_end - t0)
    return {
        "streams": len(results.total), "errors": sum(results.errors.values()),
        "error_kinds": dict(results.errors), "elapsed_s": elapsed,
        "ttft_s": results.ttft, "total_s": results.total,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--chunks", type=int, default=32)
    p.add_argument("--delay-ms", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--once", action="store_true")
    p.add_argument("--ramp", type=float, default=0.0)
    p.add_argument("--start-at", type=float, default=0.0)
    p.add_argument("--stream-timeout", type=float, default=120.0)
    p.add_argument("--out", help="write the JSON result here (default: stdout)")
    args = p.parse_args()
    try:
        import uvloop
        out = uvloop.run(run(args))
    except ImportError:  # pragma: no cover
        out = asyncio.run(run(args))
    data = orjson.dumps(out) + b"\n"
    if args.out:
        with open(args.out, "wb") as f:
            f.write(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
