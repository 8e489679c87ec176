"""Token usage read from the tail of a response, without parsing the whole body.

Works for a JSON answer (``usage`` object) and for an SSE stream (a usage chunk when the
client asked for one, or llama-server's ``timings`` in the finish chunk). The relay keeps
only the last few KiB of each answer, so this costs nothing per chunk and one scan at the end.

The two ways of counting a prompt, and how they meet:

- OpenAI ``usage``: ``prompt_tokens`` is the whole prompt; the part served from the prompt
  cache is ``prompt_tokens_details.cached_tokens`` (it may be absent or null).
- llama-server ``timings``: ``prompt_n`` is the part it had to evaluate (the *uncached*
  part) and ``cache_n`` the part it reused, so the whole prompt is ``prompt_n + cache_n``.

A real llama-server sends both in a JSON answer and in a text completion's finish chunk;
a streamed chat carries ``timings`` in its finish chunk, or, with
``stream_options.include_usage``, in the final usage chunk (``choices: []``) next to
``usage``. Its native ``/completion`` has ``timings`` only (its ``tokens_cached`` counts the
generated tokens too, so it is not read).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .frozen import quick_init

_FIELD = re.compile(rb'"(prompt_tokens|completion_tokens|cached_tokens|predicted_n|prompt_n|cache_n|predicted_ms)"'
                    rb'\s*:\s*([0-9][0-9.eE+-]*)')

TAIL_BYTES = 8192


@quick_init
@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None  # the whole prompt, cached part included
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # of prompt_tokens, served from the prompt cache
    generation_ms: float | None = None  # llama-server's predicted_ms, when reported


def usage_from_tail(tail: bytes) -> Usage | None:
    """The last ``usage`` numbers in ``tail``, completed from llama-server ``timings``; None
    if neither says anything."""
    if b'"usage"' not in tail and b'"timings"' not in tail:
        return None
    # Later occurrences win: the final chunk is the complete one.
    last: dict[bytes, bytes] = dict(_FIELD.findall(tail))
    if not last:
        return None
    prompt_n, cache_n = _int(last.get(b"prompt_n")), _int(last.get(b"cache_n"))
    prompt = _int(last.get(b"prompt_tokens"))
    if prompt is None and prompt_n is not None:
        prompt = prompt_n + (cache_n or 0)  # timings count the uncached part only
    completion = _int(last.get(b"completion_tokens"))
    if completion is None:
        completion = _int(last.get(b"predicted_n"))
    if prompt is None and completion is None:
        return None
    cached = _int(last.get(b"cached_tokens"))
    if cached is None:
        cached = cache_n
    if cached is not None and prompt is not None:
        cached = min(cached, prompt)
    predicted_ms = last.get(b"predicted_ms")
    return Usage(prompt, completion, cached, None if predicted_ms is None else _float(predicted_ms))


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
