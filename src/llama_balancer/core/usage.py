"""Token usage read from the tail of a response, without parsing the whole body.

Works for a JSON answer (``usage`` object) and for an SSE stream (a usage chunk when the
client asked for one, or llama-server's ``timings`` in the finish chunk). The relay keeps
only the last few KiB of each answer, so this costs nothing per chunk.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_PREDICTED_N = re.compile(rb'"predicted_n"\s*:\s*(\d+)')
_PROMPT_N = re.compile(rb'"prompt_n"\s*:\s*(\d+)')
_CACHE_N = re.compile(rb'"cache_n"\s*:\s*(\d+)')
_PREDICTED_MS = re.compile(rb'"predicted_ms"\s*:\s*([0-9.eE+-]+)')

TAIL_BYTES = 8192


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    generation_ms: float | None = None  # llama-server's predicted_ms, when reported


def _last_int(pattern: re.Pattern[bytes], text: bytes) -> int | None:
    found = pattern.findall(text)
    return int(found[-1]) if found else None


def usage_from_tail(tail: bytes) -> Usage | None:
    """The last ``usage`` numbers in ``tail``, else llama-server ``timings``; None if neither."""
    prompt = _last_int(_PROMPT, tail)
    completion = _last_int(_COMPLETION, tail)
    predicted = _last_int(_PREDICTED_N, tail)
    prompt_n = _last_int(_PROMPT_N, tail)
    cache_n = _last_int(_CACHE_N, tail)
    ms = _PREDICTED_MS.findall(tail)
    generation_ms = _float(ms[-1]) if ms else None
    if completion is None and predicted is not None:
        completion = predicted
        if prompt_n is not None:
            prompt = prompt_n + (cache_n or 0)
    if prompt is None and completion is None:
        return None
    return Usage(prompt, completion, cache_n, generation_ms)


def _float(raw: bytes) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None
