"""HTTP/1.1 messages at the byte level, for the native data path: a backend answer's head,
chunked framing followed through raw bytes, a request to send, the head a client gets.

Pure functions and a small state machine: no sockets here (``wire.py`` carries the bytes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import httptools

from .headers import HOP_BY_HOP


# Never relayed as the backend sent them: hop-by-hop, framing (restated for the client) and
# the request id (ours replaces it).
_NOT_RELAYED = HOP_BY_HOP | {"content-length", "x-request-id"}
_CONNECTION_OPTIONS = frozenset({"keep-alive", "close"})


@dataclass
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

    @property
    def has_body(self) -> bool:
        return self.status >= 200 and self.status not in (204, 304)


class AnswerFraming:
    """llhttp (``httptools``, strict) reads every byte of one backend answer: its head, then
    each piece of its body as it passes through.

    What llhttp refuses never reaches a client as if it were sound: a bare CR or LF in the
    head (response-header injection), duplicate or conflicting ``Content-Length``,
    ``Content-Length`` with ``Transfer-Encoding``, a chunk size that is not plain hex
    (``0x3``, ``1_0``, ``-1``), LF-only chunk lines. ``ChunkedScanner`` only locates the end
    of an answer llhttp accepts (llhttp does not say at which byte a message ended).
    """

    __slots__ = ("_parser", "_reason", "_headers", "_status", "_keep_alive", "head_done", "complete")

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._status, self._keep_alive = 0, False
        self.head_done = False
        self.complete = False  # the answer's last byte was read

    # llhttp's callbacks
    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # Read now: once the message completes (an empty body: at once) llhttp resets them.
        self._status, self._keep_alive = self._parser.get_status_code(), self._parser.should_keep_alive()
        self.head_done = True

    def on_message_complete(self) -> None:
        self.complete = True

    def head(self, head: bytes) -> AnswerHead:
        """The answer's head (without the blank line); ValueError when llhttp refuses it."""
        self._feed(head + b"\r\n\r\n")
        if not self.head_done:
            raise ValueError("incomplete answer head")
        return _answer_head(self._status, self._keep_alive, self._reason, self._headers)

    def body(self, data: bytes) -> None:
        """Check a piece of the body; ValueError when llhttp refuses it (or bytes follow the
        answer's end in the same piece, which the caller cuts off)."""
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.complete:  # bytes past a complete answer are the caller's to cut
                raise ValueError(str(exc) or type(exc).__name__) from None


STREAM_TYPES = ("text/event-stream", "application/x-ndjson")  # SSE; Ollama's NDJSON


def is_stream_type(content_type: str) -> bool:
    """Whether a Content-Type is a streamed answer's (its parameters ignored)."""
    return content_type.partition(";")[0].strip().lower() in STREAM_TYPES


def parse_answer_head(head: bytes) -> AnswerHead:
    """The head of an answer (without the blank line), read by llhttp; ValueError when
    malformed. See ``AnswerFraming`` to check the body that follows too."""
    return AnswerFraming().head(head)


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
    elif length < 0:
        keep_alive = False  # the body ends when the backend closes
    lines_out = [text for low, text in relayed if low not in named] if named else [text for _, text in relayed]
    return AnswerHead(status, reason.decode("latin-1"), lines_out, length, chunked, keep_alive, coding, event_stream,
                      keepalive_s)


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


class ChunkedScanner:
    """Follows chunked framing through the raw bytes to find the answer's end, handing each
    piece of payload to ``keep`` (the usage tail); the bytes themselves pass on untouched."""

    __slots__ = ("_need", "_crlf", "_line", "_trailer")

    def __init__(self) -> None:
        self._need = 0  # payload bytes of the current chunk still due
        self._crlf = 0  # bytes of the CRLF after a chunk's payload still due
        self._line = b""  # a size or trailer line split across reads
        self._trailer = False

    def feed(self, data: bytes, keep: Callable[[bytes], None]) -> int:
        """Bytes of ``data`` that belong to the answer when it ends here, else -1."""
        i, n = 0, len(data)
        while i < n:
            if self._need:
                take = min(self._need, n - i)
                keep(data[i:i + take])
                self._need -= take
                i += take
                if not self._need:
                    self._crlf = 2
            elif self._crlf:
                take = min(self._crlf, n - i)
                self._crlf -= take
                i += take
            else:
                j = data.find(b"\n", i)
                if j < 0:
                    self._line += data[i:]
                    if len(self._line) > 4096:
                        raise ValueError("chunk size line too long")
                    return -1
                line, self._line = self._line + data[i:j], b""
                i = j + 1
                if self._trailer:
                    if not line.strip():
                        return i
                    continue
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size:
                    self._need = size
                else:
                    self._trailer = True
        return -1


def request_bytes(method: str, target: str, host: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """An HTTP/1.1 request with ``body`` framed by Content-Length (``headers`` carry no
    framing or Host: the caller dropped them)."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "".join(lines).encode("latin-1") + body


def client_head(answer: AnswerHead, request_id: str, keep_alive: bool) -> tuple[bytes, bool]:
    """The head the client gets for ``answer`` (framing as the backend's, so its bytes pass on
    unchanged) and whether the connection stays open after it."""
    lines = [f"HTTP/1.1 {answer.status} {answer.reason}", *answer.relayed, f"X-Request-Id: {request_id}"]
    if answer.has_body:
        if answer.chunked:
            lines.append(f"Transfer-Encoding: {answer.transfer_encoding}")
        elif answer.length >= 0:
            lines.append(f"Content-Length: {answer.length}")
        else:
            keep_alive = False  # its end is the close of the connection
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), keep_alive
