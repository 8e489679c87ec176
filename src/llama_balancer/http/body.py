"""Reading a client's body as aiohttp serves it (size limit, time limit); what a
model-bearing body must hold is the routing layer's (``routing/resolve.py``)."""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from aiohttp import web

from ..core.errors import PayloadTooLarge, RequestTimeout


async def body_chunks(request: web.Request, limit: int, timeout_s: float) -> AsyncIterator[bytes]:
    """The body as it arrives: 413 as soon as it is known to exceed ``limit`` bytes, 408 (and
    the connection closes) once the client kept us waiting ``timeout_s`` in all. Only time
    spent waiting for the client counts, not a slow backend that holds an upload back."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    size = 0
    left = timeout_s
    content = request.content
    while True:
        started = time.monotonic()
        try:
            async with asyncio.timeout(left):
                chunk = await content.readany()
        except TimeoutError:
            raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
        if not chunk:
            return
        left -= time.monotonic() - started
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        yield chunk
