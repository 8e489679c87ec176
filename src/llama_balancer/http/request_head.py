"""Reading a request head by hand, for the requests the native front serves itself.

Only the plain case is accepted: ``POST`` of HTTP/1.1 to a routed path, with a body framed
by one Content-Length, no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``, and clean header
lines (token names, no control bytes). Anything else is not refused here: the connection goes to aiohttp, whose parser is
strict and complete, and which answers it as before.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Bytes a head may hold besides its CRLF line ends: tab, printable ASCII, and (obs-text)
# 0x80-0xff. A control character or a bare CR or LF (a value with a bare LF could smuggle
# a header to the backend) sends the connection to aiohttp's strict parser instead.
_CLEAN = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_HANDED_OVER = frozenset({"transfer-encoding", "expect", "upgrade"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110 token)


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str  # as sent: path and query
    path: str
    headers: list[tuple[str, str]]
    length: int  # body bytes (Content-Length)
    keep_alive: bool


def parse_request_head(head: bytes, paths: frozenset[str], max_headers: int) -> RequestHead | None:
    """The head (without the blank line) when the front serves it natively, else None."""
    if len(head.translate(None, _CLEAN)) != 2 * head.count(b"\r\n"):
        return None
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "POST" or parts[2] != "HTTP/1.1" or len(lines) - 1 > max_headers:
        return None
    target = parts[1]
    path = target.partition("?")[0]
    if path not in paths:
        return None
    headers: list[tuple[str, str]] = []
    length = -1
    keep_alive = True
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            return None
        value = value.strip(" \t")
        low = name.lower()
        if low == "content-length":
            if length >= 0 or not value.isdigit():
                return None
            length = int(value)
        elif low in _HANDED_OVER:
            return None
        elif low == "connection" and "close" in value.lower():
            keep_alive = False
        headers.append((name, value))
    if length < 0:
        return None
    return RequestHead("POST", target, path, headers, length, keep_alive)
