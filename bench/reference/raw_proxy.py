"""Reference target ``raw-proxy``: the least a Python proxy can do per request and per chunk.

Not a product: one upstream, no routing, no limits, no error handling beyond the bench's
needs. It shows what CPython on one core can reach when the data path is asyncio protocols
on uvloop (no aiohttp): the request head is parsed by hand, the JSON body once (for the
model, as any router must), an idle keep-alive upstream connection is reused, and upstream
bytes are written straight to the client transport from ``data_received`` (no task wakes up
per chunk, no re-chunking). Handles Content-Length requests, and Content-Length or chunked
answers.

Usage: ``python bench/reference/raw_proxy.py PORT BACKEND_PORT``
"""
from __future__ import annotations

import asyncio
import sys

import orjson

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

END_OF_CHUNKED = b"0\r\n\r\n"


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the backend; relays one answer at a time."""

    def __init__(self, pool: list["Upstream"]) -> None:
        self.pool = pool
        self.client: Front | None = None
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.remaining = -1  # body bytes still due (Content-Length answers)
        self.chunked = False
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, client: "Front", request: bytes) -> None:
        self.client = client
        self.transport.write(request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        if self.remaining < 0 and not self.chunked:  # still reading the head
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.head[:end]).lower()
            data = bytes(self.head)
            self.head.clear()
            at = head.find(b"content-length:")
            if at < 0:
                self.chunked = True
            else:
                stop = head.find(b"\r\n", at)
                self.remaining = end + 4 + int(head[at + 15:stop if stop > 0 else None])
        client.transport.write(data)  # type: ignore[union-attr]
        if self.chunked:
            self.tail = (self.tail + data)[-5:]
            if self.tail == END_OF_CHUNKED:
                self._done()
        else:
            self.remaining -= len(data)
            if self.remaining <= 0:
                self._done()

    def _done(self) -> None:
        self.client, self.remaining, self.chunked, self.tail = None, -1, False, b""
        self.pool.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)


class Front(asyncio.Protocol):
    """One client connection: parse each request, forward it on a pooled upstream."""

    def __init__(self, pool: list[Upstream], backend_port: int) -> None:
        self.pool, self.backend_port = pool, backend_port
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end])
            low = head.lower()
            at = low.find(b"content-length:")
            length = 0
            if at >= 0:
                stop = low.find(b"\r\n", at)
                length = int(low[at + 15:stop if stop > 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            orjson.loads(body).get("model")  # what a router must at least do
            request = (head.split(b"\r\n", 1)[0] + b"\r\nHost: backend\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)
            if self.pool:
                self.pool.pop().send(self, request)
            else:
                asyncio.get_running_loop().create_task(self._connect(request))

    async def _connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(lambda: Upstream(self.pool), "127.0.0.1", self.backend_port)
        upstream.send(self, request)


async def serve(port: int, backend_port: int) -> None:
    pool: list[Upstream] = []
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Front(pool, backend_port), "127.0.0.1", port, backlog=4096)
    await asyncio.Event().wait()


if __name__ == "__main__":
    run = uvloop.run if uvloop is not None else asyncio.run
    run(serve(int(sys.argv[1]), int(sys.argv[2])))
