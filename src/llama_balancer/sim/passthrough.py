"""Test hooks for non-model traffic a balancer passes through (not llama-server API).

- ANY /sim/echo[/anything]: answers what arrived: method, path, query, headers, and the
  body's length and sha256 (read as a stream, so uploads of any size work).
- GET /sim/stream?chunks=N&delay=S: N plain-text lines "chunk i\\n", the first at once and
  each next one S seconds later, each flushed as written.
"""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import web

from .completions import json_response


async def handle_echo(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    return json_response({
        "method": request.method,
        "path": request.path,
        "query": request.query_string,
        "headers": {str(key): value for key, value in request.headers.items()},
        "body_len": length,
        "body_sha256": digest.hexdigest(),
    })


def _query_number(request: web.Request, key: str, default: float) -> float:
    try:
        return max(0.0, float(request.query.get(key, default)))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{key}: expected a number") from None


async def handle_stream(request: web.Request) -> web.StreamResponse:
    chunks = int(_query_number(request, "chunks", 3))
    delay = _query_number(request, "delay", 0.1)
    resp = web.StreamResponse(status=200)
    resp.headers["Content-Type"] = "text/plain; charset=utf-8"
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        for i in range(chunks):
            if i:
                await asyncio.sleep(delay)
            await resp.write(f"chunk {i}\n".encode())
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client left; nothing else to do
    return resp
