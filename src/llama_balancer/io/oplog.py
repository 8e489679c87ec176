"""The operational log: one line per event on stderr, as ``key=value`` text or JSON.

An event is an ordinary ``logging`` call whose ``extra`` is ``event(name, **fields)``::

    log.warning("%s is down: %s", name, reason, extra=event("backend_state", server=name, to="invalid"))

    ts=2025-06-01T10:00:00.123Z level=warning event=backend_state server=PC1 to=invalid msg="PC1 is down: ..."
    {"ts": "...", "level": "warning", "logger": "llama_balancer.pollers", "event": "backend_state", ...}

Records without an event (aiohttp's, a library's) come out as one line too, with their
logger. A traceback is one escaped field (``exc=``), never lines of its own. This log is
separate from the JSON access log (one line per request, stdout by default).

``Notices`` writes what may repeat at request rate (retries, failovers, 429s, queue
timeouts, unknown model names) through a throttle: the first lines of a burst, then one a
second per kind, each carrying how many were held back since the previous one.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal, TextIO

import orjson

from ..core.throttle import Seen, Throttle

LogFormat = Literal["text", "json"]
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

_EVENT, _FIELDS = "lb_event", "lb_fields"


def event(name: str, **fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call: an event name and its fields (None values are left out)."""
    return {_EVENT: name, _FIELDS: fields}


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(_plain(item)) for item in value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def logfmt_value(value: Any) -> str:
    """A value as logfmt writes it: bare when it can be, else a JSON string."""
    value = _plain(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and all(c > " " and c not in '"=\\' and c != "\x7f" for c in text):
        return text
    return orjson.dumps(text).decode()


class _Base(logging.Formatter):
    def _fields(self, record: logging.LogRecord) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname.lower()}
        name = getattr(record, _EVENT, None)
        if name is None:
            out["logger"] = record.name
        else:
            out["event"] = name
            for key, value in (getattr(record, _FIELDS, None) or {}).items():
                if value is not None and key not in out:
                    out[key] = value
        out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return out


class TextFormatter(_Base):
    """``ts=… level=… event=… key=value … msg="…"`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in self._fields(record).items())


class JsonFormatter(_Base):
    """One JSON object per line; the event's fields keep their types."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: (value if isinstance(value, (str, int, bool)) else _plain(value))
                  for key, value in self._fields(record).items()}
        return orjson.dumps(fields).decode()


def setup_logging(level: str = "info", fmt: LogFormat = "text", stream: TextIO | None = None) -> logging.Handler:
    """The process's operational log: every logger to ``stream`` (stderr) at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


class Notices:
    """Throttled events: what may repeat at request rate. One per runtime (no globals)."""

    def __init__(self, rate: float = 1.0, burst: int = 10) -> None:
        self._throttle = Throttle(rate, burst)
        self._unknown = Seen()

    def emit(self, logger: logging.Logger, level: int, name: str, key: str, message: str, *args: Any,
             **fields: Any) -> bool:
        """Log unless this ``key``'s lines come too fast; True when written."""
        if not logger.isEnabledFor(level):
            return False
        held = self._throttle.admit(key, time.monotonic())
        if held is None:
            return False
        if held:
            fields["suppressed"] = held
        logger.log(level, message, *args, extra=event(name, **fields))
        return True

    def first_unknown(self, model: str) -> bool:
        """True the first time a model name is found unknown (while remembered)."""
        return self._unknown.first(model)
