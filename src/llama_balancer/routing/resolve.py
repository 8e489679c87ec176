"""A model-bearing body read once: a JSON object naming a model, the rewrite rules applied,
the servers its pattern lists, and the prompt's fingerprint for cache-aware placement."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..core.config import Config
from ..core.errors import InvalidJSON, MissingModel
from ..core.frozen import quick_init
from ..core.prefix import Fingerprint, fingerprint
from ..core.rewrite import apply_rewrites


@quick_init
@dataclass(frozen=True)
class Resolved:
    """The request as the policy sees it: routing candidates and the upstream model name."""

    requested: str
    upstream_model: str
    body: dict[str, Any]
    rewritten: bool
    candidates: list[str] | None  # None: no pattern matches (the fallback server takes it)
    fingerprint: Fingerprint


def parse_payload(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400 invalid_json."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidJSON("request body must be a JSON object")
    return payload


def model_of(payload: dict[str, Any], required: bool) -> str | None:
    """The requested model; None where the endpoint may omit it (-> fallback)."""
    model = payload.get("model")
    if isinstance(model, str) and model:
        return model
    if model is None and not required:
        return None
    if model is None:
        raise MissingModel("'model' is required")
    raise MissingModel(f"'model' must be a non-empty string, got {orjson.dumps(model).decode()[:60]}")


def resolve(config: Config, requested: str, payload: dict[str, Any]) -> Resolved:
    """Rewrite rules first (they may rename the model), then the pattern's servers."""
    upstream_model, body = requested, payload
    rewritten = apply_rewrites(config.rewrites, requested, payload)
    if rewritten is not None:
        upstream_model, body = rewritten
    return Resolved(requested, upstream_model, body, rewritten is not None,
                    config.candidates_for(requested), fingerprint(body))
