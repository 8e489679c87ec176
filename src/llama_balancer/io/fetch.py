"""One small JSON request to a backend over the upstream pool, read by llhttp: what a
resume asks a server before it continues a stream (llama-server's ``/apply-template``)."""
from __future__ import annotations

import asyncio
from typing import Any, Iterable

import orjson

from ..core.errors import UpstreamError, UpstreamTimeout
from ..h1.answers import HOP_BY_HOP, AnswerReader, request_bytes
from .wire_pool import WirePool

FETCH_TIMEOUT_S = 10.0
_DROPPED = HOP_BY_HOP | {"content-length", "accept", "accept-encoding"}


class _Answer:
    """The pooled connection's sink for one answer (``wire.UpstreamSink``)."""

    def __init__(self, done: asyncio.Future[tuple[int, bytes]]) -> None:
        self.reader = AnswerReader(dechunk=True)
        self.body: list[bytes] = []
        self.done = done

    def upstream_data(self, data: bytes, now: float) -> None:
        if self.done.done():
            return
        try:
            self.body.append(self.reader.feed(data))
        except ValueError as exc:
            self.done.set_exception(UpstreamError(f"sent a malformed answer: {exc}", kind="protocol"))
            return
        if self.reader.complete and self.reader.head is not None:
            self.done.set_result((self.reader.head.status, b"".join(self.body)))

    def upstream_closed(self, reason: str = "") -> None:
        if not self.done.done():
            self.done.set_exception(UpstreamError(f"closed the connection{': ' + reason if reason else ''}",
                                                  kind="reset"))


async def fetch_json(pool: WirePool, host: str, port: int, tls: bool, server: str, path: str, body: Any,
                     headers: Iterable[tuple[str, str]], where: str, timeout_s: float = FETCH_TIMEOUT_S) -> Any:
    """POST ``body`` as JSON to ``path`` and return the JSON answer; UpstreamError when the
    server cannot be reached, does not answer 200 within ``timeout_s``, or not in JSON."""
    lines = [(name, value) for name, value in headers if name.lower() not in _DROPPED]
    request = request_bytes("POST", path, f"{host}:{port}", lines, orjson.dumps(body))
    conn = pool.pooled(host, port, tls, server) or await pool.connect(host, port, tls, server, where)
    done: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
    sink = _Answer(done)
    conn.attach(sink)
    conn.write(request)
    clean = False
    try:
        status, payload = await asyncio.wait_for(done, timeout_s)
        clean = sink.reader.reusable
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"{where} {path} timed out", kind="timeout", server=server) from None
    except UpstreamError as exc:
        raise UpstreamError(f"{where} {path} {exc.message}", kind=exc.kind, server=server) from None
    finally:
        conn.release(clean, sink.reader.head.keepalive_s if sink.reader.head is not None else None)
        sink.reader.release()
    if status != 200:
        raise UpstreamError(f"{where} {path} answered HTTP {status}", kind=f"http_{status}", server=server)
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"{where} {path} answered with something that is not JSON", kind="protocol",
                            server=server) from None
