"""Headers for the upstream request: hygiene, request id, and the backend's own key."""
from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from ..core.config import ServerConfig
from ..io.headers import upstream_request_headers


def headers_for(incoming: CIMultiDict[str] | CIMultiDictProxy[str], server: ServerConfig, request_id: str,
                body_replaced: bool, keys_checked: bool) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones; the client's key is ours, not the backend's:
    it is replaced by the server's ``api_key``, or dropped when the balancer checks keys
    (``keys_checked``)."""
    headers = upstream_request_headers(incoming, body_replaced=body_replaced)
    headers["X-Request-Id"] = request_id
    if server.api_key is not None:
        headers.popall("x-api-key", None)
        headers["Authorization"] = f"Bearer {server.api_key}"
    elif keys_checked:
        headers.popall("Authorization", None)
        headers.popall("x-api-key", None)
    return headers
