"""A resumable stream's relay: whole SSE events only, each in a chunk of ours.

A stream that may be resumed (``core.resume``) is not relayed byte for byte: the backend's
payload is cut into complete events, and each goes to the client as one chunk, so when the
backend breaks the client holds whole events only (the half event never left) and a
continuation from another server, or an error event, can follow on a chunk boundary. The
events are noted (``StreamLog``) as they go; a continuation's events pass through a
``Splice`` first, which gives them the original stream's shape.

Pure: payload in, bytes to write out.
"""
from __future__ import annotations

import orjson

from ..core.errors import BalancerError
from ..core.resume import DONE_EVENT, Splice, StreamLog
from ..core.usage import UsageTail


class EventRelay:
    """One client stream, across the backends that serve it."""

    __slots__ = ("log", "framed", "tail", "_rest", "_splice", "resumes")

    def __init__(self, log: StreamLog, tail: UsageTail | None = None, framed: bool = True) -> None:
        self.log = log
        self.tail = tail  # keeps the events as the client got them (the usage of the whole stream)
        self.framed = framed  # chunked to the client (False: an HTTP/1.0 client, ended by the close)
        self._rest = b""  # the start of an event not complete yet
        self._splice: Splice | None = None
        self.resumes = 0

    def feed(self, payload: bytes) -> bytes:
        """The bytes to write for ``payload`` (the backend's de-chunked body): every event
        it completes, in the original stream's shape."""
        data = self._rest + payload if self._rest else payload
        end = data.rfind(b"\n\n")
        if end < 0:
            self._rest = data
            return b""
        self._rest = data[end + 2:]
        out: list[bytes] = []
        for event in data[:end].split(b"\n\n"):
            if not event.strip(b"\r\n"):
                continue
            whole = event + b"\n\n"
            for sent in (self._splice.events(whole) if self._splice is not None else (whole,)):
                self.log.note(sent)
                if self.tail is not None:
                    self.tail.keep(sent)
                out.append(self._frame(sent))
        return b"".join(out)

    def resume(self) -> None:
        """The next backend continues the stream: its events are spliced into this one."""
        self._rest = b""
        self._splice = Splice(self.log)
        self.resumes += 1

    def end(self, add_done: bool = False) -> bytes:
        """The last bytes of a stream that ended well: ``data: [DONE]`` when asked and not
        sent yet (a backend that broke after its finish chunk), then the chunked terminator."""
        self._rest = b""
        done = self.feed(DONE_EVENT) if add_done and not self.log.done else b""
        return done + (b"0\r\n\r\n" if self.framed else b"")

    def error_event(self, error: BalancerError) -> bytes:
        """An SSE error event (OpenAI's error shape) that says the stream did not finish; the
        connection closes after it, without the chunked terminator, so no client can take
        the stream for complete."""
        return self._frame(b"data: " + orjson.dumps(error.body()) + b"\n\n")

    def _frame(self, event: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(event), event) if self.framed else event
