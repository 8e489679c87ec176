"""Who is asking: a user name found in a system message, else the client's IP address.

The old tool recognised ``ユーザーの名前は「NAME」`` with several quote pairs; we keep that.
"""
from __future__ import annotations

import re
from typing import Any

_QUOTES = [("「", "」"), ("『", "』"), ("“", "”"), ('"', '"'), ("'", "'")]
_NAME = re.compile(
    "ユーザーの名前は(?:" + "|".join(f"{re.escape(o)}([^{re.escape(c)}\n]+){re.escape(c)}" for o, c in _QUOTES) + ")"
)


def user_from_messages(messages: Any) -> str | None:
    """The first user name declared in a system message, if any."""
    if not isinstance(messages, list):
        return None
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "system":
            continue
        for text in _texts(message.get("content")):
            found = _NAME.search(text)
            if found:
                return next(group for group in found.groups() if group)
    return None


def client_ip(forwarded_for: str | None, peer: str | None) -> str:
    """First ``X-Forwarded-For`` entry, else the peer address."""
    if forwarded_for:
        first = forwarded_for.split(",", 1)[0].strip()
        if first:
            return first
    return peer or "unknown"


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):  # OpenAI content parts
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []
