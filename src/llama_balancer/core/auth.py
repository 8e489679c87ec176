"""Who may call what: client API keys for the API, admin keys for state and admin actions.

With no key configured everything is open (the old tool's behaviour). Once keys exist the
admin surface is never open: it takes an admin key, or a client key when no admin key is set.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

Access = Literal["open", "api", "admin"]


@dataclass(frozen=True)
class AuthPolicy:
    api_keys: frozenset[str] = frozenset()
    admin_keys: frozenset[str] = frozenset()

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys or self.admin_keys)

    def allows(self, access: Access, token: str | None) -> bool:
        if access == "open" or not self.enabled:
            return True
        if token is None:
            return False
        if _member(token, self.admin_keys):
            return True
        if access == "api":
            return not self.api_keys or _member(token, self.api_keys)
        return not self.admin_keys and _member(token, self.api_keys)


def _member(token: str, keys: frozenset[str]) -> bool:
    """Constant-time comparison against every key, so timing tells nothing about them.

    Bytes are compared, never str: a header value that is not valid UTF-8 arrives with its
    bad bytes as surrogate escapes, and must be refused (401), not crash the check."""
    given = raw_bytes(token)
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, raw_bytes(key))
    return found


def raw_bytes(text: str) -> bytes:
    """The bytes a header value (or key) was decoded from: UTF-8, with undecodable bytes
    restored from their surrogate escapes (as aiohttp decodes headers). A lone surrogate
    that no byte stands for (a JSON ``\\udXXX`` escape) still encodes, and matches nothing
    a client can send."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def from_latin1(value: str | None) -> str | None:
    """A header value decoded as latin-1 (the native front's reading), re-read the way
    aiohttp reads it, so both fronts hand the same key to ``AuthPolicy``."""
    if value is None:
        return None
    return value.encode("latin-1").decode("utf-8", "surrogateescape")


def bearer_token(authorization: str | None, api_key_header: str | None) -> str | None:
    """``Authorization: Bearer X`` (OpenAI clients) or ``x-api-key: X`` (Anthropic clients)."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if api_key_header and api_key_header.strip():
        return api_key_header.strip()
    return None


def merge_keys(configured: list[str], from_env: str | None) -> frozenset[str]:
    """Keys from the config file plus a comma-separated environment variable."""
    extra = [key.strip() for key in (from_env or "").split(",") if key.strip()]
    return frozenset([*configured, *extra])
