"""Reading a client's body as aiohttp serves it (size limit, time limit), and a
model-bearing one once: JSON object, a string ``model``."""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import orjson
from aiohttp import web

from ..core.errors import InvalidJSON, MissingModel, PayloadTooLarge, RequestTimeout


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


async def read_limited(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, within the limits of ``body_chunks``."""
    return b"".join([chunk async for chunk in body_chunks(request, limit, timeout_s)])


def parse_payload(raw: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidJSON("request body must be a JSON object")
    return payload


def model_of(payload: dict[str, Any], required: bool) -> str | None:
    model = payload.get("model")
    if isinstance(model, str) and model:
        return model
    if model is None and not required:
        return None
    if model is None:
        raise MissingModel("'model' is required")
    raise MissingModel(f"'model' must be a non-empty string, got {orjson.dumps(model).decode()[:60]}")
