"""Header hygiene for a reverse proxy: hop-by-hop headers and Host never cross."""
from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    h.lower() for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
        "Proxy-Connection", "TE", "Trailer", "Trailers", "Transfer-Encoding", "Upgrade",
    )
)


def _dropped(headers: CIMultiDictProxy[str] | CIMultiDict[str], extra: frozenset[str]) -> frozenset[str]:
    named = {token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")}
    return HOP_BY_HOP | extra | frozenset(named)


def upstream_request_headers(incoming: CIMultiDictProxy[str], body_replaced: bool) -> CIMultiDict[str]:
    """Client headers to send upstream: no hop-by-hop, no Host; no length if we re-encode."""
    extra = {"host", "content-length"} if body_replaced else {"host"}
    drop = _dropped(incoming, frozenset(extra))
    return CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in drop)


def client_response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Backend headers to relay to the client, minus hop-by-hop ones."""
    drop = _dropped(upstream, frozenset())
    return CIMultiDict((k, v) for k, v in upstream.items() if k.lower() not in drop)
