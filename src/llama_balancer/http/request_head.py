"""Reading a request head by hand, for the requests the native front serves itself.

Only the plain case is accepted: ``POST`` of HTTP/1.1 to a routed path, with a body framed
by one Content-Length, no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``, and clean header
lines (token names, no control bytes). Anything else the connection hands to aiohttp, whose
parser is strict and complete, and which answers it as before, except what no parser may
accept, which is refused here at once (``MalformedRequest``: 400, then the connection
closes): a request line that is not RFC 9112's ``method SP request-target SP HTTP-version``
in visible ASCII (a tab or any control byte in it, HTTP/0.9, an empty line), and a routed
request's Content-Length that is not one run of ASCII digits.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.errors import BadRequest

# Bytes a head may hold besides its CRLF line ends: tab, printable ASCII, and (obs-text)
# 0x80-0xff. A control character or a bare CR or LF (a value with a bare LF could smuggle
# a header to the backend) sends the connection to aiohttp's strict parser instead.
_CLEAN = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_HANDED_OVER = frozenset({"transfer-encoding", "expect", "upgrade"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110 token)
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_VISIBLE = bytes(range(0x21, 0x7F))  # all a request line holds, besides its two spaces
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() takes "\xb2" and "٣"
_HUGE = 1 << 62  # a Content-Length of more digits: over any body limit (413), no big int


class MalformedRequest(BadRequest):
    """A head no HTTP/1.1 server may accept: answered 400, and the connection closes (what
    follows on it cannot be framed)."""

    code = "malformed_request"
    closes = True


class VersionNotSupported(MalformedRequest):
    status, code = 505, "http_version_not_supported"


def check_request_line(line: bytes) -> None:
    """Raise MalformedRequest unless ``line`` (without its CRLF) is a request line: a token,
    one space, a target, one space, ``HTTP/d.d``, all visible ASCII. A tab, any other control
    byte or a byte over 0x7f is refused (h11, nginx and aiohttp's parser refuse them too), as
    are HTTP/0.9 (no version) and an empty line."""
    odd = line.translate(None, _VISIBLE)
    if odd == b"  ":
        method, target, version = line.split(b" ")
        if method and target and version:
            if not _METHOD.fullmatch(method):
                raise MalformedRequest("the request method is not a token")
            if not _VERSION.fullmatch(version):
                raise MalformedRequest("malformed HTTP version in the request line")
            if version[5] != 0x31:  # "1"
                raise VersionNotSupported(f"HTTP/{version[5:].decode()} is not served: use HTTP/1.1")
            return
    if not line:
        raise MalformedRequest("empty request line")
    if any(byte < 0x20 or byte == 0x7F for byte in odd):
        raise MalformedRequest("control character in the request line")
    if any(byte > 0x7F for byte in odd):
        raise MalformedRequest("non-ASCII byte in the request line (percent-encode it)")
    if odd == b" ":
        raise MalformedRequest("no HTTP version in the request line (HTTP/0.9 is not served)")
    raise MalformedRequest("malformed request line: expected 'METHOD /target HTTP/1.1'")


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str  # as sent: path and query
    path: str
    headers: list[tuple[str, str]]
    length: int  # body bytes (Content-Length)
    keep_alive: bool


def parse_request_head(head: bytes, paths: frozenset[str], max_headers: int) -> RequestHead | None:
    """The head (without the blank line) when the front serves it natively, None when aiohttp
    is to serve it; raises MalformedRequest for what nobody may serve."""
    line_end = head.find(b"\r\n")
    check_request_line(head if line_end < 0 else head[:line_end])
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
            if length >= 0:
                raise MalformedRequest("more than one Content-Length")
            if not _DIGITS.fullmatch(value):
                if not value.isascii() or not value.isdigit():
                    raise MalformedRequest(f"Content-Length must be ASCII digits, got {value[:40]!r}")
                length = _HUGE
            else:
                length = int(value)
        elif low in _HANDED_OVER:
            return None
        elif low == "connection" and "close" in value.lower():
            keep_alive = False
        headers.append((name, value))
    if length < 0:
        return None
    return RequestHead("POST", target, path, headers, length, keep_alive)
