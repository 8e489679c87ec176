"""Backend answers read by llhttp (``httptools``, strict mode), and the heads we write.

``AnswerReader`` reads every byte of one backend answer: its head, then each piece of its
body as it passes through, handing back the body bytes to relay as they came (no
re-chunking) and the payload to the usage tail. What llhttp refuses never reaches a client
as if it were sound: a bare CR or LF in the head (response-header injection), duplicate or
conflicting ``Content-Length``, ``Content-Length`` with ``Transfer-Encoding``, a chunk size
that is not plain hex (``0x3``, ``1_0``, ``-1``), LF-only chunk lines.

Pure functions and small objects: no sockets here.
"""
from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Iterable

import httptools
import orjson

from ..core.errors import BalancerError
from ..core.usage import UsageTail

HOP_BY_HOP = frozenset(
    h.lower() for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
        "Proxy-Connection", "TE", "Trailer", "Trailers", "Transfer-Encoding", "Upgrade",
    )
)
# Never relayed as the backend sent them: hop-by-hop, framing (restated for the client) and
# the request id (ours replaces it).
_NOT_RELAYED = HOP_BY_HOP | {"content-length", "x-request-id"}
_CONNECTION_OPTIONS = frozenset({"keep-alive", "close"})
MAX_HEAD_BYTES = 65536
STREAM_TYPES = ("text/event-stream", "application/x-ndjson")  # SSE; Ollama's NDJSON


@dataclass(slots=True)
class AnswerHead:
    """A backend answer's status line and headers, with how its body is framed."""

    status: int
    reason: str
    relayed: list[str]  # "Name: value" lines a client may see, as the backend wrote them
    length: int  # body bytes due; -1 when chunked or delimited by close
    chunked: bool
    keep_alive: bool
    transfer_encoding: str = ""  # as sent, restated to the client (the bytes pass unchanged)
    event_stream: bool = False  # Content-Type: text/event-stream or NDJSON (a streamed answer)
    keepalive_s: float | None = None  # the backend's "Keep-Alive: timeout=N": it closes idle ones then
    has_body: bool = True  # a status that carries a body (not 1xx, 204, 304): _answer_head sets it


class AnswerReader:
    """llhttp over one backend answer. ``feed`` returns the body bytes to relay."""

    __slots__ = ("_parser", "_reason", "_headers", "_heads", "_head_raw", "_remaining", "_tail", "_payload",
                 "_extra", "head", "complete")

    def __init__(self, tail: UsageTail | None = None, dechunk: bool = False) -> None:
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._heads = 0  # heads read, interim (1xx) ones included
        self._head_raw: bytearray | None = bytearray()  # the bytes until the final head's end
        self._remaining = -1  # Content-Length bytes still due
        self._tail = tail
        self._payload: list[bytes] | None = [] if dechunk else None
        self._extra = False  # bytes followed the answer's end
        self.head: AnswerHead | None = None
        self.complete = False  # the answer's last byte was read

    def feed(self, data: bytes) -> bytes:
        """The body bytes in ``data`` to relay (the head and anything past the answer's end
        cut off; de-chunked payload when asked for). ValueError when llhttp refuses it."""
        parser = self._parser
        if parser is None:
            raise ValueError("bytes after the answer was released")
        raw = self._head_raw
        if raw is not None:
            raw += data
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._refused(exc)
        if raw is None:  # the body's next piece (a stream's chunk)
            body = data
        else:
            if self.head is None:
                if len(raw) > MAX_HEAD_BYTES:
                    raise ValueError(f"an answer head over {MAX_HEAD_BYTES} bytes")
                return b""
            start = 0
            for _ in range(self._heads):  # llhttp accepted them: each ends at its first blank line
                start = raw.find(b"\r\n\r\n", start) + 4
            self._head_raw = None
            body = bytes(raw[start:])
        if self._payload is not None:
            body, self._payload = b"".join(self._payload), []
        elif self._remaining >= 0:
            if len(body) > self._remaining:
                body, self._extra = body[:self._remaining], True
            self._remaining -= len(body)
        elif self._extra:  # chunked: where the answer ended in this piece is not known
            raise ValueError("bytes after the answer's end")
        return body

    @property
    def reusable(self) -> bool:
        """The connection may carry another exchange: the answer ended cleanly where it said."""
        head = self.head
        return self.complete and not self._extra and head is not None and head.keep_alive

    def release(self) -> None:
        """Done with this answer: its parser goes. The parser holds this reader's callbacks, so
        the two form a reference cycle that only the garbage collector would break, once per
        request (bench/path.py: some 7 % of a request's CPU went to those collections)."""
        self._parser = None

    def _refused(self, exc: httptools.HttpParserError) -> None:
        if not self.complete:  # bytes past a complete answer: noted, cut off above
            raise ValueError(str(exc) or type(exc).__name__) from None
        self._extra = True

    # llhttp's callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            self._extra = True
        self._reason, self._headers = b"", []

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.head is not None:  # a message after the answer: noted by on_message_begin
            return
        self._heads += 1
        parser = self._parser
        assert parser is not None  # llhttp calls back from feed_data only
        status = parser.get_status_code()
        if status < 200:  # an interim answer: the real one follows
            return
        head = self.head = _answer_head(status, parser.should_keep_alive(), self._reason, self._headers)
        self._remaining = head.length if head.has_body else 0

    def on_body(self, body: bytes) -> None:
        if self._tail is not None:
            self._tail.keep(body)
        if self._payload is not None:
            self._payload.append(body)

    def on_message_complete(self) -> None:
        if self.head is not None:
            self.complete = True


def is_stream_type(content_type: str) -> bool:
    """Whether a Content-Type is a streamed answer's (its parameters ignored)."""
    return content_type.partition(";")[0].strip().lower() in STREAM_TYPES


def _answer_head(status: int, keep_alive: bool, reason: bytes, headers: list[tuple[bytes, bytes]]) -> AnswerHead:
    """Our view of a head llhttp accepted. The lines a client may see are picked out in the
    same pass: hop-by-hop headers, and any the answer names in ``Connection``, never cross."""
    relayed: list[tuple[str, str]] = []
    named: set[str] = set()
    length, chunked, coding, event_stream = -1, False, "", False
    keepalive_s: float | None = None
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1").strip()
        low = name.lower()
        if low not in _NOT_RELAYED:
            relayed.append((low, f"{name}: {value}"))
            if low == "content-type":
                event_stream = is_stream_type(value)
        elif low == "content-length":
            length = int(value)  # llhttp checked: digits, one value
        elif low == "transfer-encoding":
            coding = value
            chunked = value.lower().endswith("chunked")
        elif low == "connection":
            named |= {token.strip() for token in value.lower().split(",")} - _CONNECTION_OPTIONS
        elif low == "keep-alive":
            keepalive_s = _keepalive_timeout(value)
    if chunked:
        length = -1
    elif length < 0 and status not in (204, 304):
        keep_alive = False  # the body ends when the backend closes
    lines_out = [text for low, text in relayed if low not in named] if named else [text for _, text in relayed]
    return AnswerHead(status, reason.decode("latin-1"), lines_out, length, chunked, keep_alive, coding, event_stream,
                      keepalive_s, status >= 200 and status not in (204, 304))


def _keepalive_timeout(value: str) -> float | None:
    """``timeout=5, max=100`` -> 5.0 (llama-server closes an idle connection after 5 s)."""
    for part in value.split(","):
        key, _, number = part.strip().partition("=")
        if key.strip().lower() == "timeout":
            try:
                return max(float(number), 0.0)
            except ValueError:
                return None
    return None


def request_bytes(method: str, target: str, host: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """An HTTP/1.1 request with ``body`` framed by Content-Length (``headers`` carry no
    framing or Host: the caller dropped them)."""
    lines = "\r\n".join(map(": ".join, headers))  # (name, value) pairs joined in C
    if lines:
        lines += "\r\n"
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{lines}Content-Length: {len(body)}\r\n\r\n".encode(
        "latin-1") + body


def client_head(answer: AnswerHead, request_id: str, keep_alive: bool, extra: Iterable[str] = (),
                dechunked: bool = False) -> tuple[bytes, bool]:
    """The head the client gets for ``answer`` (framing as the backend's, so its bytes pass on
    unchanged; none when its payload is relayed de-chunked, ended by the close) and whether
    the connection stays open after it."""
    lines = [f"HTTP/1.1 {answer.status} {answer.reason}", *answer.relayed, f"X-Request-Id: {request_id}", *extra]
    if answer.has_body:
        if answer.chunked and not dechunked:
            lines.append(f"Transfer-Encoding: {answer.transfer_encoding}")
        elif answer.length >= 0:
            lines.append(f"Content-Length: {answer.length}")
        else:
            keep_alive = False  # its end is the close of the connection
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), keep_alive


def error_bytes(exc: BalancerError, request_id: str, close: bool, extra: Iterable[str] = ()) -> bytes:
    """An error answer as bytes (OpenAI's error shape), for whoever writes to a transport
    itself; ``extra``: more header lines."""
    body = orjson.dumps(exc.body())
    lines = [f"HTTP/1.1 {exc.status} {phrase(exc.status)}", f"Date: {formatdate(usegmt=True)}",
             "Content-Type: application/json", f"Content-Length: {len(body)}", f"X-Request-Id: {request_id}"]
    lines += [f"{name}: {value}" for name, value in exc.headers.items()]
    lines += extra
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
