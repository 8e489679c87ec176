"""Client requests read by llhttp (``httptools``, strict mode), as events.

One ``RequestReader`` per client connection. What it is fed, llhttp parses in full: heads,
Content-Length and chunked bodies (de-chunked; trailer fields are dropped, never merged into
the head), pipelined requests, one CRLF before the first request. What llhttp refuses, and
what we refuse besides (HTTP/0.9 and 2.0 request lines, more than one empty line before the
first request, a transfer coding other than chunked, a field over ``max_field_bytes``, a
head over ``HEAD_BYTES``, more than ``max_headers`` fields), raises ``MalformedRequest``:
400 (505, 501, 431) and a close. A request that asks to upgrade (or CONNECT) is read as any
other, body included: we never switch protocols, so what follows is HTTP/1.1 again. After a
request that closes the connection, nothing more is read (RFC 9112 9.6). The caller feeds a
connection's bytes only while it can serve what they hold, so a request's first byte is
usually the first byte of a feed; then ``raw`` keeps the request's bytes as they came, for a
connection handed to another server (aiohttp) whole.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Union

import httptools

from ..core.errors import BadRequest

_VISIBLE = bytes(range(0x21, 0x7F))  # all a request line holds, besides its two spaces
_FRAMING_INITIALS = frozenset(b"cCtTeE")  # of Content-Length, Transfer-Encoding, Expect
HEAD_BYTES = 65536  # a whole head's limit (each field's own is the caller's max_field_bytes)


class MalformedRequest(BadRequest):
    """A head no HTTP/1.1 server may accept: answered 400, and the connection closes (what
    follows on it cannot be framed)."""

    code = "malformed_request"
    closes = True


class VersionNotSupported(MalformedRequest):
    status, code = 505, "http_version_not_supported"


class HeadTooLarge(MalformedRequest):
    status, code = 431, "request_header_fields_too_large"


class CodingNotImplemented(MalformedRequest):
    """A transfer coding besides chunked (``gzip, chunked``): RFC 9112 6.1's 501. Read on, its
    body would reach the backend de-chunked but still coded, as if it were not."""

    status, code = 501, "not_implemented"


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str  # as sent: path and query
    path: str
    version: str  # "1.1" or "1.0"
    headers: list[tuple[str, str]]  # as sent (latin-1), in order
    keep_alive: bool
    content_length: int | None  # None: chunked, or no body
    chunked: bool
    expect_continue: bool


@dataclass(slots=True)
class Body:
    data: bytes


class End:
    """The request's last byte was read."""


END = End()
Event = Union[RequestHead, Body, End]


class RequestReader:
    """llhttp over one connection's request bytes; ``events`` holds what it found, in order."""

    __slots__ = ("_parser", "_url", "_headers", "_size", "_max_field", "_max_head", "_max_headers", "_in_message",
                 "_head_done", "_line_checked", "events", "raw", "raw_known", "_lead",
                 "_framing", "_skipped_body", "_priming", "_keep_alive", "_closed", "_raw_headers", "_pending_head",
                 "_feeding")

    def __init__(self, max_field_bytes: int, max_headers: int) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._max_field, self._max_headers = max_field_bytes, max_headers
        self._max_head = max(HEAD_BYTES, max_field_bytes)
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._pending_head = 0  # bytes fed while the current head is incomplete
        self._feeding = 0  # the length of the bytes being fed
        self._size = 0  # trailer bytes of the current request
        self._in_message = False  # between a request's first byte and its last
        self._head_done = False
        self._line_checked = False
        self.events: deque[Event] = deque()
        self.raw = bytearray()  # the current request's bytes as sent, while raw_known
        self.raw_known = False  # the current request began at the start of a feed
        self._lead: bytes | None = b""  # the CR/LF bytes before the first request (None once it began)
        self._framing = b""  # the current request's framing header, as a head line
        self._skipped_body = False  # llhttp skipped the current request's body (see _read_skipped_body)
        self._priming = False  # a fresh parser reads a made-up head: its callbacks are not the client's
        self._keep_alive = True  # the current request's connection stays open after it
        self._closed = False  # a request that closes the connection was read: nothing more is

    @property
    def idle(self) -> bool:
        """No request in progress and none waiting in ``events``: the next byte starts one."""
        return not self._in_message and not self.events

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises MalformedRequest (the connection is then unusable)."""
        if self._closed:
            return
        self._feeding = len(data)
        at_boundary = self.idle
        if at_boundary:
            if self._lead is not None:
                self._check_lead(data)
            self.raw_known = True
            self.raw.clear()
        if self.raw_known:
            self.raw += data
        while True:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                raise cause if isinstance(cause, MalformedRequest) else MalformedRequest(str(exc)) from None
            except httptools.HttpParserUpgrade as exc:
                # a request that asks to upgrade (or CONNECT) was read: we never switch, so its
                # body and what follows are read on (httptools has resumed llhttp)
                if self._skipped_body:
                    self._read_skipped_body()
                data = data[exc.args[0]:]
                if data and not self._closed:
                    continue
            except httptools.HttpParserError as exc:
                if self._closed:  # what followed a request that closes the connection: never read
                    return
                raise MalformedRequest(f"malformed request: {exc}") from None
            break
        if self._in_message and not self._head_done:
            self._pending_head += len(data)  # a head still arriving (and what came before it in this read)
            if self._pending_head > self._max_head:
                raise HeadTooLarge(f"request head over {self._max_head} bytes")
            if not self._line_checked and self.raw_known:
                self._check_line()

    def release(self) -> None:
        """The connection is over: its parser goes (parser and reader refer to each other, a
        cycle only a collection would free, once per connection). Nothing is read after."""
        self._closed = True
        self._parser = None  # type: ignore[assignment]

    def keep_raw(self, keep: bool) -> None:
        """The caller serves the current request itself (False): its raw bytes are not needed."""
        if not keep:
            self.raw_known = False
            self.raw.clear()

    # -- llhttp's callbacks

    def on_message_begin(self) -> None:
        if self._priming:
            return
        self._lead = None
        # A second request in one feed: where it began is unknown. ``raw`` (from the first
        # one's first byte on) stays right for the first, until keep_raw(False) lets it go.
        self._in_message, self._head_done, self._line_checked = True, False, False
        self._url, self._raw_headers, self._size = b"", [], 0

    def on_url(self, url: bytes) -> None:
        if not self._priming:
            self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept as bytes and checked at the head's end (``feed`` bounds what a head may hold
        # while it arrives): one call per field is the hot spot of reading a request.
        if self._head_done:  # a trailer field: never merged into the head (RFC 9110 6.5.1), dropped
            self._grow(len(name) + len(value) + 4)
        else:
            self._raw_headers.append((name, value))

    def _check_head(self) -> None:
        """The head's limits, now that it is whole: each field (and the target) within
        ``max_field_bytes``, at most ``max_headers`` fields."""
        limit = self._max_field
        if len(self._url) > limit:
            raise HeadTooLarge(f"request target over {limit} bytes")
        if len(self._raw_headers) > self._max_headers:
            raise HeadTooLarge(f"more than {self._max_headers} header fields")
        if self._pending_head + self._feeding <= limit:
            return  # the whole head came in fewer bytes than one field may hold
        for name, value in self._raw_headers:
            if len(name) + len(value) > limit:
                raise HeadTooLarge(f"a header field over {limit} bytes")

    def on_headers_complete(self) -> None:
        if self._priming:
            return
        if len(self._raw_headers) > self._max_headers or self._pending_head + self._feeding > self._max_field \
                or len(self._url) > self._max_field:
            self._check_head()  # which limit, if any (the common small head never gets here)
        self._pending_head = 0
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            if version == "0.9":
                raise MalformedRequest("no HTTP version in the request line (HTTP/0.9 is not served)")
            raise VersionNotSupported(f"HTTP/{version} is not served: use HTTP/1.1")
        self._head_done = True
        length: int | None = None
        chunked = expect = False
        self._headers = headers = []
        for raw_name, raw_value in self._raw_headers:
            # llhttp drops the OWS before a value; the OWS after it is not part of it either (RFC 9112 5)
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1").rstrip(" \t")
            headers.append((name, value))
            if len(raw_name) < 6 or raw_name[0] not in _FRAMING_INITIALS:
                continue  # not one of the three below (the common case, one byte compared)
            low = name.lower()
            if low == "content-length":
                length = int(value)  # llhttp checked: ASCII digits, one value, no Transfer-Encoding
            elif low == "transfer-encoding":
                if value.strip(" \t").lower() != "chunked":  # llhttp checked that the last one is
                    raise CodingNotImplemented(f"Transfer-Encoding {value.strip()!r}: only chunked is served")
                chunked = True
            elif low == "expect":
                expect = value.strip().lower() == "100-continue"
        target = self._url.decode("latin-1")
        keep_alive = parser.should_keep_alive()
        self.events.append(RequestHead(parser.get_method().decode("latin-1"), target, target.partition("?")[0],
                                       version, self._headers, keep_alive, length, chunked, expect))
        self._keep_alive = keep_alive
        if parser.should_upgrade() and (chunked or length):
            self._skipped_body = True
            self._framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % (length or 0)
            if not keep_alive:
                self._framing += b"\r\nConnection: close"  # llhttp then reads nothing after it either

    def on_body(self, body: bytes) -> None:
        self.events.append(Body(body))

    def on_message_complete(self) -> None:
        if self._priming or self._skipped_body:  # the body is still to come (_read_skipped_body)
            return
        self._in_message = False
        self._closed = not self._keep_alive
        self.events.append(END)

    def _read_skipped_body(self) -> None:
        """httptools makes llhttp skip the body of a request that asks to upgrade (or CONNECT),
        as if the protocol switched at once; then its body bytes would be read as the next
        request. We never switch: a fresh parser, primed with a made-up head that frames the
        same body, reads it (and then the connection's next requests)."""
        self._skipped_body = False
        self._parser = httptools.HttpRequestParser(self)
        self._priming = True
        try:
            self._parser.feed_data(b"POST / HTTP/1.1\r\n" + self._framing + b"\r\n\r\n")
        finally:
            self._priming = False

    def _check_lead(self, data: bytes) -> None:
        """RFC 9112 2.2: one empty line (CRLF) before the first request is ignored; more, or a
        bare CR or LF, is refused at once, wherever the reads split. (Between requests, llhttp
        skips CR and LF bytes itself, where we cannot see them.)"""
        run = len(data) - len(data.lstrip(b"\r\n"))
        lead = (self._lead or b"") + data[:run]
        if lead != b"\r\n"[:len(lead)] or (run < len(data) and len(lead) == 1):
            raise MalformedRequest("empty request line")
        self._lead = lead

    def _grow(self, n: int) -> None:
        self._size += n
        if self._size > self._max_head:
            raise HeadTooLarge(f"request head over {self._max_head} bytes")

    def _check_line(self) -> None:
        """A head still arriving: its request line is checked as soon as it is complete, so an
        HTTP/0.9 line (which llhttp would wait on) gets its 400 now, not when a deadline ends."""
        raw = self.raw
        start = 2 if raw[:2] == b"\r\n" else 0
        end = raw.find(b"\r\n", start)
        if end < 0:
            return
        self._line_checked = True
        line = bytes(raw[start:end])
        if line.translate(None, _VISIBLE) == b" ":
            raise MalformedRequest("no HTTP version in the request line (HTTP/0.9 is not served)")
