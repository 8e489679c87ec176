"""Header hygiene for a reverse proxy: hop-by-hop headers and Host never cross."""
from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from ..h1.answers import HOP_BY_HOP

# Precomputed for the common case (no header named in Connection): no set building per request.
_UPSTREAM_DROP = HOP_BY_HOP | {"host"}
_UPSTREAM_DROP_REENCODED = _UPSTREAM_DROP | {"content-length"}


def _dropped(headers: CIMultiDictProxy[str] | CIMultiDict[str], base: frozenset[str]) -> frozenset[str]:
    """``base`` plus any header the message names in ``Connection`` (also hop-by-hop)."""
    named = headers.getall("Connection", None)
    if not named:
        return base
    return base | {token.strip().lower() for value in named for token in value.split(",")}


def upstream_request_headers(incoming: CIMultiDictProxy[str], body_replaced: bool) -> CIMultiDict[str]:
    """Client headers to send upstream: no hop-by-hop, no Host; no length if we re-encode."""
    drop = _dropped(incoming, _UPSTREAM_DROP_REENCODED if body_replaced else _UPSTREAM_DROP)
    return CIMultiDict([(k, v) for k, v in incoming.items() if k.lower() not in drop])


def client_response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Backend headers to relay to the client, minus hop-by-hop ones."""
    drop = _dropped(upstream, HOP_BY_HOP)
    return CIMultiDict([(k, v) for k, v in upstream.items() if k.lower() not in drop])
