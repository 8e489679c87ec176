"""CORS for browser clients (``balancer.cors_origins``): which headers an answer carries.

Pure. With no origins configured nothing here applies: CORS stays the backends' business
(a llama-server answers ``Access-Control-Allow-Origin: *`` itself), as in the old tool.
With origins configured the balancer decides alone: it answers preflights itself (before
any key check: browsers never send keys on a preflight), strips the backends' own
``Access-Control-*`` headers, and adds its own to every answer for an allowed origin
(errors too, so a browser client can read them).
"""
from __future__ import annotations

import re
from typing import Sequence

ALLOW_METHODS = "GET, POST, HEAD, OPTIONS"
EXPOSE_HEADERS = "X-Request-Id, Retry-After"
MAX_AGE_S = 600
_HEADER_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")


def allowed_origin(origins: Sequence[str], origin: str | None) -> str | None:
    """The ``Access-Control-Allow-Origin`` value for a request from ``origin``, or None."""
    if not origins or not origin:
        return None
    if "*" in origins:
        return "*"
    return origin if origin.lower() in origins else None


def is_preflight(method: str, origin: str | None, requested_method: str | None) -> bool:
    return method == "OPTIONS" and bool(origin) and bool(requested_method)


def answer_headers(origins: Sequence[str], origin: str | None) -> list[tuple[str, str]]:
    """What an answer to a request from ``origin`` carries (none without an Origin header)."""
    if not origin:
        return []
    allow = allowed_origin(origins, origin)
    out = [] if allow == "*" else [("Vary", "Origin")]
    if allow is not None:
        out += [("Access-Control-Allow-Origin", allow), ("Access-Control-Expose-Headers", EXPOSE_HEADERS)]
    return out


def preflight_headers(origins: Sequence[str], origin: str | None,
                      requested_headers: str | None) -> list[tuple[str, str]] | None:
    """The headers of a preflight's answer, or None when the origin is not allowed."""
    allow = allowed_origin(origins, origin)
    if allow is None:
        return None
    out = [("Access-Control-Allow-Origin", allow), ("Access-Control-Allow-Methods", ALLOW_METHODS),
           ("Access-Control-Max-Age", str(MAX_AGE_S))]
    wanted = (requested_headers or "").strip()
    if wanted and _HEADER_LIST.match(wanted):
        out.append(("Access-Control-Allow-Headers", wanted))  # Authorization included when asked
    if allow != "*":
        out.append(("Vary", "Origin"))
    return out


def is_cors_header(name: str) -> bool:
    """A backend's own CORS header, dropped when the balancer answers CORS itself."""
    return name.lower().startswith("access-control-")
