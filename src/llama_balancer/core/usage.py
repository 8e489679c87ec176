"""Token usage read from the tail of a response, without parsing the whole body.

Works for a JSON answer (``usage`` object) and for an SSE stream (a usage chunk when the
client asked for one, or llama-server's ``timings`` in the finish chunk). The relay keeps
only the last few KiB of each answer, so this costs nothing per chunk and one scan at the end.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .frozen import quick_init

_FIELD = re.compile(rb'"(prompt_tokens|completion_tokens|predicted_n|prompt_n|cache_n|predicted_ms)"\s*:\s*([0-9][0-9.eE+-]*)')

TAIL_BYTES = 8192


@quick_init
@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    generation_ms: float | None = None  # llama-server's predicted_ms, when reported


def usage_from_tail(tail: bytes) -> Usage | None:
    """The last ``usage`` numbers in ``tail``, else llama-server ``timings``; None if neither."""
    if b'"usage"' not in tail and b'"timings"' not in tail:
        return None
    # Later occurrences win: the final chunk is the complete one.
    last: dict[bytes, bytes] = dict(_FIELD.findall(tail))
    if not last:
        return None
    prompt = _int(last.get(b"prompt_tokens"))
    completion = _int(last.get(b"completion_tokens"))
    cache_n = _int(last.get(b"cache_n"))
    if completion is None and b"predicted_n" in last:
        completion = _int(last[b"predicted_n"])
        prompt_n = _int(last.get(b"prompt_n"))
        if prompt_n is not None:
            prompt = prompt_n + (cache_n or 0)
    if prompt is None and completion is None:
        return None
    predicted_ms = last.get(b"predicted_ms")
    return Usage(prompt, completion, cache_n, None if predicted_ms is None else _float(predicted_ms))


def _int(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    if raw.isdigit():
        return int(raw)
    try:
        return int(raw)
    except ValueError:
        return None


def _float(raw: bytes | None) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None
