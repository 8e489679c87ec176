"""Prompt fingerprints: cumulative hashes over successive blocks of a request's prompt.

A backend's prompt cache helps a request exactly as far as the prompt's prefix matches what
it processed before. We cannot see tokens, but we can see the request: cut it into blocks
(one per chat message, long ones cut further; fixed-size pieces of a text prompt) and
chain-hash them, so hash ``i`` stands for blocks ``0..i``. Remembering the hashes sent to a
target lets a later request find its longest cached prefix there (``longest_match``).

The algorithm, fixed so that every process and replica computes the same values:
``digest_i = blake2b(digest_{i-1} + kind + utf8(block_i), digest_size=8)`` with
``digest_{-1} = b""``; ``hash_i = int.from_bytes(digest_i, "big")``. ``kind`` is one byte:
``M`` a chat message's first block, ``C`` a continuation of the block before, ``T`` tools,
``P`` a text-prompt piece, ``K`` a piece of token ids, ``X`` infill context.
A chat message renders as ``role`` (``role:name`` when named, plus ``#tool_call_id``), a
newline, then its text; content parts' texts are joined with newlines, other parts become
``<type:hash>`` markers; ``tool_calls`` are appended as sorted-key JSON after a newline.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Container

import orjson

from .frozen import quick_init

CHAT_BLOCK_CHARS = 1024  # a long message (a big system prompt) is cut so partial overlaps count
TEXT_BLOCK_CHARS = 256  # text prompts have no message boundaries; smaller pieces match finer
TOKEN_BLOCK = 64  # token-id prompts: ids per block
CHARS_PER_TOKEN = 4  # weight of one token id, in characters, for match lengths
MAX_BLOCKS = 512  # beyond this the tail is not fingerprinted (bounds the work and the state)

_SYSTEM_ROLES = ("system", "developer")
_WEIGHT = itemgetter(2)  # of a block (kind, text, weight)


@quick_init
@dataclass(frozen=True)
class Fingerprint:
    """Cumulative block hashes and each block's length in prompt characters."""

    hashes: tuple[int, ...] = ()
    lengths: tuple[int, ...] = ()

    @property
    def chars(self) -> int:
        return sum(self.lengths)


def fingerprint(payload: Any, max_blocks: int = MAX_BLOCKS) -> Fingerprint:
    """The fingerprint of a request body; empty when it carries no prompt we recognise.

    Chat (``messages``, Anthropic ``system``, Responses ``instructions`` + ``input`` items)
    is cut per message; ``prompt`` (or a plain ``input``) per fixed-size piece.
    """
    if not isinstance(payload, dict):
        return Fingerprint()
    blocks: list[tuple[bytes, str, int]] = []
    _blocks(payload, blocks, max_blocks)
    return _chain(blocks, max_blocks)


def prefix_hashes(payload: Any) -> tuple[int, ...]:
    """Just the cumulative hashes of ``fingerprint(payload)``."""
    return fingerprint(payload).hashes


def longest_match(fp: Fingerprint, known: Container[int]) -> tuple[int, int]:
    """(matched blocks, matched chars) of the longest prefix whose hash is in ``known``.

    Scans from the longest prefix down: an LRU may have dropped a short prefix's hash and
    kept a longer one, so the known set need not be closed under prefixes.
    """
    hashes = fp.hashes
    for index in range(len(hashes) - 1, -1, -1):
        if hashes[index] in known:
            return index + 1, sum(fp.lengths[: index + 1])
    return 0, 0


def _chain(blocks: list[tuple[bytes, str, int]], max_blocks: int) -> Fingerprint:
    """Chain-hash the first ``max_blocks`` blocks (the module docstring's algorithm)."""
    if len(blocks) > max_blocks:
        del blocks[max(max_blocks, 0):]
    hashes: list[int] = []
    append = hashes.append
    blake2b, from_bytes = hashlib.blake2b, int.from_bytes
    digest = b""
    for kind, text, _ in blocks:
        digest = blake2b(digest + kind + text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        append(from_bytes(digest, "big"))
    return Fingerprint(tuple(hashes), tuple(map(_WEIGHT, blocks)))


def _blocks(payload: dict[str, Any], out: list[tuple[bytes, str, int]], limit: int) -> None:
    """Append (kind, text, weight in chars) for each block, in prompt order; producing
    stops once ``out`` holds ``limit`` blocks (the rest would not be hashed)."""
    messages = payload.get("messages")
    items = payload.get("input")
    if isinstance(messages, list) or (isinstance(items, list) and _has_items(items)):
        _chat_blocks(payload, messages if isinstance(messages, list) else items, out, limit)
        return
    if "input_prefix" in payload:  # llama.cpp /infill: repository context, then the prefix
        extra = payload.get("input_extra")
        if extra:
            _cut(out, b"X", _canonical(extra), CHAT_BLOCK_CHARS, limit)
        _text_blocks(payload.get("input_prefix"), out, limit)
        return
    if isinstance(items, str) and payload.get("instructions"):  # Responses with a string input
        _chat_blocks(payload, [{"role": "user", "content": items}], out, limit)
        return
    _text_blocks(payload.get("prompt", items), out, limit)


def _chat_blocks(payload: dict[str, Any], messages: list[Any], out: list[tuple[bytes, str, int]],
                 limit: int) -> None:
    """Leading system text, then the tools, then the other messages.

    Chat templates commonly render tools inside the system turn, after its text, so a
    changed tool list changes everything after the system prompt but not the prompt itself.
    """
    if "system" in payload or "instructions" in payload:
        for key in ("system", "instructions"):
            if payload.get(key):
                _cut(out, b"M", "system\n" + _content_text(payload[key]), CHAT_BLOCK_CHARS, limit)
    tools = payload.get("tools")
    leading = True  # still in the leading system messages (the tools come after them)
    for message in messages:  # one pass, each message cut like _cut (its one-piece case inline)
        if not isinstance(message, dict):
            continue
        if len(out) >= limit:
            return
        if leading and message.get("role") not in _SYSTEM_ROLES:
            leading = False
            if tools:
                _cut(out, b"T", _canonical(tools), CHAT_BLOCK_CHARS, limit)
                if len(out) >= limit:
                    return
        text = _render(message)
        if len(text) <= CHAT_BLOCK_CHARS:
            out.append((b"M", text, len(text)))
        else:
            _cut(out, b"M", text, CHAT_BLOCK_CHARS, limit)
    if leading and tools and len(out) < limit:  # only system messages (or none)
        _cut(out, b"T", _canonical(tools), CHAT_BLOCK_CHARS, limit)


def _render(message: dict[str, Any]) -> str:
    """``role`` (``:name``, ``#tool_call_id``), a newline, then the message's text."""
    role = message.get("role")
    if len(message) == 2 and isinstance(role, str):  # the common {"role", "content"} message
        content = message.get("content")
        if isinstance(content, str):
            return role + "\n" + content
    head = role if isinstance(role, str) else str(message.get("type", "item"))
    name = message.get("name")
    if isinstance(name, str):
        head += ":" + name
    call_id = message.get("tool_call_id")
    if isinstance(call_id, str):
        head += "#" + call_id
    if "content" in message or isinstance(role, str):
        content = message.get("content")
        body = content if isinstance(content, str) else _content_text(content)
    else:  # a Responses item without a role (function_call, ...): all of it
        body = _canonical(message)
    tool_calls = message.get("tool_calls")
    if tool_calls:
        body += "\n" + _canonical(tool_calls)
    return head + "\n" + body


def _content_text(content: Any) -> str:
    """A message's text: a string as is; content parts' texts joined with newlines, so a
    single text part equals the plain string; images and other parts as short markers."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return ""
    pieces = []
    for part in content:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif isinstance(part, str):
            pieces.append(part)
        else:
            kind = part.get("type", "part") if isinstance(part, dict) else "part"
            digest = hashlib.blake2b(_canonical(part).encode(), digest_size=8).hexdigest()
            pieces.append(f"<{kind}:{digest}>")
    return "\n".join(pieces)


def _text_blocks(prompt: Any, out: list[tuple[bytes, str, int]], limit: int) -> None:
    """A completion prompt: a string, token ids, or a batch (the first prompt stands for it)."""
    if isinstance(prompt, dict):  # llama.cpp multimodal prompt object
        prompt = prompt.get("prompt_string")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list, dict)) for p in prompt):
        prompt = prompt[0]
        if isinstance(prompt, dict):
            prompt = prompt.get("prompt_string")
    if isinstance(prompt, str) and prompt:
        _cut(out, b"P", prompt, TEXT_BLOCK_CHARS, limit)
    elif isinstance(prompt, list):
        for start in range(0, len(prompt), TOKEN_BLOCK):
            if len(out) >= limit:
                return
            piece = prompt[start:start + TOKEN_BLOCK]
            out.append((b"K", ",".join(map(str, piece)), len(piece) * CHARS_PER_TOKEN))


def _cut(out: list[tuple[bytes, str, int]], kind: bytes, text: str, size: int, limit: int) -> None:
    """Append ``text`` in pieces of at most ``size`` chars; the first keeps ``kind``, the
    rest ``C``; an empty text is one empty block."""
    length = len(text)
    if length <= size:
        out.append((kind, text, length))
        return
    for start in range(0, length, size):
        if len(out) >= limit:
            return
        piece = text[start:start + size]
        out.append((kind if start == 0 else b"C", piece, len(piece)))


def _has_items(items: list[Any]) -> bool:
    return any(isinstance(item, dict) and ("role" in item or "type" in item) for item in items)


def _canonical(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return repr(value)
