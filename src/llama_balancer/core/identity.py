"""Who is asking: a user name found in a system message, else the client's IP address.

The old tool recognised ``ユーザーの名前は「NAME」`` with several quote pairs; we keep that.
"""
from __future__ import annotations

import re
from ipaddress import ip_address, ip_network
from typing import Any

_QUOTES = [("「", "」"), ("『", "』"), ("“", "”"), ('"', '"'), ("'", "'")]
_NAME = re.compile(
    "ユーザーの名前は(?:" + "|".join(f"{re.escape(o)}([^{re.escape(c)}\n]+){re.escape(c)}" for o, c in _QUOTES) + ")"
)


def user_from_request(payload: Any) -> str | None:
    """The first user name declared in a request's system text: Anthropic's ``system``, the
    Responses API's ``instructions``, then the system messages of ``messages`` (or of the
    Responses API's ``input`` items)."""
    if not isinstance(payload, dict):
        return None
    if "system" in payload or "instructions" in payload:
        for key in ("system", "instructions"):
            for text in _texts(payload.get(key)):
                found = _NAME.search(text)
                if found:
                    return next(group for group in found.groups() if group)
    messages = payload.get("messages")
    return user_from_messages(messages if messages is not None else payload.get("input"))


def user_from_messages(messages: Any) -> str | None:
    """The first user name declared in a system message, if any."""
    if not isinstance(messages, list):
        return None
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "system":
            continue
        content = message.get("content")
        for text in (content,) if isinstance(content, str) else _texts(content):
            found = _NAME.search(text)
            if found:
                return next(group for group in found.groups() if group)
    return None


class TrustedProxies:
    """Addresses whose ``X-Forwarded-For`` is believed: IPs, CIDR networks, or ``*`` (all)."""

    def __init__(self, entries: list[str]) -> None:
        self.trust_all = "*" in entries
        self._networks = [ip_network(e, strict=False) for e in entries if e != "*"]

    def trusts(self, address: str) -> bool:
        if self.trust_all:
            return True
        try:
            ip = ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)


def client_ip(forwarded_for: str | None, peer: str | None, trusted: TrustedProxies) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy.

    Behind trusted proxies the ``X-Forwarded-For`` chain is read from the right and the
    first untrusted address wins (a client can prepend anything, but not past our proxies);
    with every hop trusted, that is the first entry, as the old tool read it.
    """
    if not peer or not forwarded_for or not trusted.trusts(peer):
        return peer or "unknown"
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not trusted.trusts(hop):
            return hop
    return hops[0] if hops else peer


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):  # OpenAI content parts
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []
