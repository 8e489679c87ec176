"""Shapes of JSON and SSE answers, for comparing two servers by structure, not by value.

``skeleton`` reduces JSON to its type skeleton (objects keep their keys, a list keeps one
merged element skeleton, scalars become a type name); ``shape_differences`` names every path
where two skeletons differ; ``sse_events`` checks llama-server's SSE framing while it splits a
stream into payloads; ``stream_shape`` counts a run of same-shaped events once.
"""
from __future__ import annotations

from typing import Any

import orjson


def skeleton(value: Any) -> Any:
    """JSON reduced to its type skeleton: objects keep their keys, lists become a list of one
    merged element skeleton (empty stays empty), scalars become their type's name."""
    if isinstance(value, dict):
        return {key: skeleton(item) for key, item in value.items()}
    if isinstance(value, list):
        merged: Any = None
        for item in value:
            merged = _merge(merged, skeleton(item)) if merged is not None else skeleton(item)
        return [] if merged is None else [merged]
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str"}[type(value)]


def _merge(a: Any, b: Any) -> Any:
    """One skeleton for two list elements: objects merge key by key, other types join."""
    if a == b:
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        return {key: _merge(a[key], b[key]) if key in a and key in b else a.get(key, b.get(key))
                for key in {**a, **b}}
    names = {repr(x) for x in (a, b)}
    return " | ".join(sorted(names))


def shape_differences(real: Any, sim: Any, path: str = "$") -> list[str]:
    """Every place where two skeletons differ, named by its path (``$.a[].b``)."""
    if isinstance(real, dict) and isinstance(sim, dict):
        out = [f"{path}.{key}: missing in the sim" for key in real if key not in sim]
        out += [f"{path}.{key}: only in the sim" for key in sim if key not in real]
        for key in real:
            if key in sim:
                out += shape_differences(real[key], sim[key], f"{path}.{key}")
        return out
    if isinstance(real, list) and isinstance(sim, list) and real and sim:
        return shape_differences(real[0], sim[0], f"{path}[]")
    return [] if real == sim else [f"{path}: real {real!r}, sim {sim!r}"]


def body_differences(real: Any, sim: Any, allowed: dict[str, str] | None = None) -> list[str]:
    """Where the skeletons differ but for ``allowed`` paths, each of which must still differ
    (an allowance the sim no longer needs is stale, and reported too)."""
    allowed = allowed or {}
    found = shape_differences(skeleton(real), skeleton(sim))
    used = {d.split(":")[0] for d in found}
    return ([d for d in found if d.split(":")[0] not in allowed]
            + [f"{path}: allowed to differ, but no longer does" for path in allowed if path not in used])


def assert_no_differences(found: list[str], what: str) -> None:
    assert not found, f"{what}: the sim differs from llama-server:\n  " + "\n  ".join(found)


def assert_same_shape(real: Any, sim: Any, allowed: dict[str, str] | None = None, what: str = "body") -> None:
    assert_no_differences(body_differences(real, sim, allowed), what)


def sse_events(body: bytes) -> list[Any]:
    """The payloads of an SSE body, checking llama-server's framing on the way: events are
    ``data: <payload>`` blocks, each ended by a blank line; a payload is JSON or ``[DONE]``."""
    assert body.endswith(b"\n\n"), body[-80:]
    events: list[Any] = []
    for block in body[:-2].split(b"\n\n"):
        assert block.startswith(b"data: ") and b"\n" not in block, block[:120]
        payload = block[len(b"data: "):]
        events.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return events


def stream_shape(events: list[Any]) -> list[Any]:
    """The skeletons of a stream's events, a run of same-shaped events counted once."""
    shapes: list[Any] = []
    for event in events:
        shape = event if event == "[DONE]" else skeleton(event)
        if not shapes or shapes[-1] != shape:
            shapes.append(shape)
    return shapes


def named_sse_events(body: bytes) -> list[tuple[str, Any]]:
    """The events of a stream of named SSE events (Anthropic messages, OpenAI responses), as
    (name, payload), checking the framing: each block is ``event: NAME`` then one ``data: ``
    line of JSON whose ``type`` is the event's name, ended by a blank line; no ``[DONE]``."""
    assert body.endswith(b"\n\n"), body[-80:]
    events: list[tuple[str, Any]] = []
    for block in body[:-2].split(b"\n\n"):
        lines = block.split(b"\n")
        assert len(lines) == 2 and lines[0].startswith(b"event: ") and lines[1].startswith(b"data: "), block[:120]
        name, payload = lines[0][len(b"event: "):].decode(), orjson.loads(lines[1][len(b"data: "):])
        assert payload.get("type") == name, block[:120]
        events.append((name, payload))
    return events


def named_stream_shape(events: list[tuple[str, Any]]) -> list[Any]:
    """``stream_shape`` for named events: (name, skeleton), a run of equal ones counted once."""
    shapes: list[Any] = []
    for name, payload in events:
        shape = (name, skeleton(payload))
        if not shapes or shapes[-1] != shape:
            shapes.append(shape)
    return shapes
