"""A deterministic toy tokenizer and chat renderer.

Rule: a token is one of the sim's own generated pieces (`` w12``: a space, ``w``, digits), a
run of word characters, a single punctuation character, or a run of whitespace:
``re.findall(r" w\\d+|\\w+|[^\\w\\s]|\\s+", text)``, so generated text tokenizes back to as
many tokens as were generated, as a real model's output does. A chat is rendered one message at
a time as ``<|role|>content\\n`` and the tokens of the messages are concatenated, so the
tokens of a conversation are always a prefix of the tokens of the same conversation with
one more turn (the property the prompt cache depends on). No generation prompt is
appended. Generated text is ``w0 w1 w2 ...``: one token per word, with a leading space on
every token but the first. A prompt that ends with such a run (``...w0 w1 w2``) is continued
where it stops (`` w3 w4 ...``), as a model continues its own partial answer: what a resumed
stream (the balancer's mid-stream resume) relies on.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN_RE = re.compile(r" w\d+|\w+|[^\w\s]|\s+")
_OWN_TAIL = re.compile(r"(?: w(\d+))*$")


def tokenize(text: str) -> list[str]:
    """Split text into toy tokens (see module docstring for the rule)."""
    return _TOKEN_RE.findall(text)


def content_text(content: Any) -> str:
    """Text of an OpenAI message content: a string or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict):
                parts.append(f"[{part.get('type', 'part')}]")
            else:
                parts.append(str(part))
        return "".join(parts)
    return str(content)


def render_message(message: dict[str, Any]) -> str:
    """One chat message in the sim's template: ``<|role|>content\\n``."""
    role = str(message.get("role", "user"))
    return f"<|{role}|>{content_text(message.get('content'))}\n"


def chat_tokens(messages: list[dict[str, Any]]) -> list[str]:
    """Tokens of a rendered chat, message by message (keeps the prefix property)."""
    tokens: list[str] = []
    for message in messages:
        tokens.extend(tokenize(render_message(message)))
    return tokens


def prompt_tokens(prompt: Any) -> list[str]:
    """Tokens of a completion prompt: text, a list of texts (first used) or token ids."""
    if isinstance(prompt, str):
        return tokenize(prompt)
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):
            return tokenize(first)
        if isinstance(first, int):
            return [str(t) for t in prompt]
        if isinstance(first, list):
            return [str(t) for t in first]
    return []


def generated_piece(index: int) -> str:
    """The index-th generated token: "w0", then " w1", " w2", ..."""
    return f"w{index}" if index == 0 else f" w{index}"


def continued_from(text: str) -> int:
    """How many generated pieces ``text`` ends with (``w0 w1 ... w{k-1}``: k); 0 for none.
    Generation goes on from piece k, so a prompt + partial answer continues the answer."""
    tail = _OWN_TAIL.search(text)
    assert tail is not None  # the pattern matches the empty string at the end
    numbers = [int(n) for n in re.findall(r"\d+", tail.group())]
    if text[:tail.start()].endswith("w0"):  # the first piece has no space of its own
        numbers.insert(0, 0)
    if 0 not in numbers:
        return 0
    run = numbers[len(numbers) - 1 - numbers[::-1].index(0):]  # from the last w0 on
    return len(run) if run == list(range(len(run))) else 0


def common_prefix_len(a: list[str], b: list[str]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i, block = 0, 64
    while i + block <= n and a[i:i + block] == b[i:i + block]:
        i += block  # whole blocks compare at C speed; then finish one by one
    while i < n and a[i] == b[i]:
        i += 1
    return i
