"""Token usage read from the tail of a response, without parsing the whole body.

Works for a JSON answer (``usage`` object) and for an SSE or NDJSON stream (a usage chunk when
the client asked for one, or llama-server's ``timings`` in the finish chunk). The relay keeps
only the last few KiB of each answer (and its first event, ``head_of``), so this costs nothing
per chunk and one scan at the end.

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

The other APIs' counts:

- OpenAI Responses: ``usage.input_tokens`` (the whole prompt), ``output_tokens``,
  ``input_tokens_details.cached_tokens``; a stream's ``response.completed`` event has them
  (llama-server adds ``timings`` there).
- Anthropic Messages: ``usage.input_tokens`` counts the prompt *without* its cached part,
  ``cache_read_input_tokens`` (and ``cache_creation_input_tokens``) the rest; a stream has them
  in ``message_start`` (the answer's first event, which ``head_of`` keeps) and the output
  tokens in the last ``message_delta``.
- Ollama: ``prompt_eval_count``, ``eval_count`` and ``eval_duration`` (ns) in the last line
  (or the whole answer); no cached count.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .frozen import quick_init

_VALUE = rb'\s*:\s*([0-9][0-9.eE+-]*)'
_FIELD = re.compile(rb'"(prompt_tokens|completion_tokens|cached_tokens|predicted_n|prompt_n|cache_n|predicted_ms'
                    rb'|prompt_ms)"'
                    + _VALUE)
# Anthropic's, the Responses API's and Ollama's: scanned for only when the end of the tail
# names one (each alternative slows the regex's scan of the whole tail).
_OTHER_FIELD = re.compile(rb'"(input_tokens|output_tokens|cache_read_input_tokens|cache_creation_input_tokens'
                          rb'|prompt_eval_count|eval_count|eval_duration)"' + _VALUE)

TAIL_BYTES = 8192
_TRIM_AT = TAIL_BYTES + TAIL_BYTES // 4  # a tail may grow this long before it is cut back to TAIL_BYTES
_END_BYTES = 2048  # the end of a tail that names the final counts (usage_from_tail)
HEAD_BYTES = 2048  # of an answer's first event, kept with the tail (``head_of``)


@quick_init
@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None  # the whole prompt, cached part included
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # of prompt_tokens, served from the prompt cache
    generation_ms: float | None = None  # llama-server's predicted_ms, when reported
    # llama-server's timings.prompt_n / prompt_ms: the uncached part it evaluated, and how
    # long that took (the placement's hold weighs a wait against this server's prefill pace).
    prefill_tokens: int | None = None
    prefill_ms: float | None = None


def usage_from_tail(tail: bytes) -> Usage | None:
    """The last ``usage`` numbers in ``tail``, completed from llama-server ``timings``; None
    if neither says anything."""
    marked = b'"usage"' in tail or b'"timings"' in tail
    # Later occurrences win: the final chunk is the complete one.
    last: dict[bytes, bytes] = dict(_FIELD.findall(tail)) if marked else {}
    if b"prompt_tokens" not in last or b"completion_tokens" not in last:  # not OpenAI's whole usage
        end = tail[-_END_BYTES:]  # where every one of these answers has its final counts
        if b'put_tokens"' in end or b'eval_count"' in end:  # (cache_read_)in/output_tokens, (prompt_)eval_count
            if not marked:
                last = dict(_FIELD.findall(tail))
            last.update(_OTHER_FIELD.findall(tail))
    if not last:
        return None
    get = last.get
    prompt = _int(get(b"prompt_tokens"))
    if prompt is None:
        prompt = _prompt(last)
    completion = _int(get(b"completion_tokens"))
    if completion is None:
        completion = _first(last, b"output_tokens", b"eval_count", b"predicted_n")
    if prompt is None and completion is None:
        return None
    cached = _first(last, b"cached_tokens", b"cache_read_input_tokens", b"cache_n")
    if cached is not None and prompt is not None:
        cached = min(cached, prompt)
    generation_ms = _float(get(b"predicted_ms"))
    if generation_ms is None and b"eval_duration" in last:
        generation_ms = (_float(last[b"eval_duration"]) or 0.0) / 1e6  # Ollama's nanoseconds
    prompt_n, prompt_ms = get(b"prompt_n"), get(b"prompt_ms")
    return Usage(prompt, completion, cached, generation_ms, None if prompt_n is None else _int(prompt_n),
                 None if prompt_ms is None else _float(prompt_ms))


def _prompt(last: dict[bytes, bytes]) -> int | None:
    """The whole prompt, however the answer counts it (module docstring)."""
    prompt = _int(last.get(b"prompt_tokens"))
    if prompt is not None:
        return prompt
    given = _int(last.get(b"input_tokens"))
    if given is not None:
        read, created = _int(last.get(b"cache_read_input_tokens")), _int(last.get(b"cache_creation_input_tokens"))
        return given + (read or 0) + (created or 0)  # Anthropic counts the cached part apart; Responses has none
    prompt = _int(last.get(b"prompt_eval_count"))
    if prompt is not None:
        return prompt
    prompt_n = _int(last.get(b"prompt_n"))
    return None if prompt_n is None else prompt_n + (_int(last.get(b"cache_n")) or 0)  # timings: uncached only


def _first(last: dict[bytes, bytes], *keys: bytes) -> int | None:
    for key in keys:
        value = _int(last.get(key))
        if value is not None:
            return value
    return None


class UsageTail:
    """The last TAIL_BYTES (up to a quarter more) of an answer's payload and its first event,
    kept as it passes: one list of pieces, the first the answer's head event (``head_of``).
    The only keeper of it, whichever path relays the answer."""

    __slots__ = ("pieces", "_kept")

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self._kept = 0

    def keep(self, piece: bytes) -> None:
        tail = self.pieces
        if not tail:  # the answer's first piece: its first event stays too
            tail.append(head_of(piece))
        tail.append(piece)
        kept = self._kept = self._kept + len(piece)
        if kept >= _TRIM_AT:  # trimmed now and then, not at every piece: this runs for every chunk
            while kept - len(tail[1]) >= TAIL_BYTES:
                kept -= len(tail.pop(1))
            self._kept = kept


def head_of(first_piece: bytes) -> bytes:
    """What of an answer's first piece is kept beside its tail: its first event (up to a blank
    line, within HEAD_BYTES), where an Anthropic stream counts the prompt; nothing for a JSON
    body or an event that long."""
    end = first_piece.find(b"\n\n", 0, HEAD_BYTES)
    return first_piece[:end + 2] if end >= 0 else b""


def _int(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    if raw.isdigit():  # bytes: ASCII digits only
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
