"""Reading a model-bearing body once: size limit, JSON object, a string ``model``."""
from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..core.errors import InvalidJSON, MissingModel, PayloadTooLarge


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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
