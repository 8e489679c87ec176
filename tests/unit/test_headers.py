"""Hop-by-hop headers, Host, and headers named in Connection never cross the proxy."""
from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from llama_balancer.io.headers import client_response_headers, upstream_request_headers


def proxy(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_upstream_headers_drop_hop_by_hop_host_and_connection_named_ones():
    incoming = proxy(("Host", "lb:18000"), ("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"),
                     ("Keep-Alive", "5"), ("TE", "trailers"), ("Accept", "a"), ("Accept", "b"),
                     ("Content-Length", "10"))
    sent = upstream_request_headers(incoming, body_replaced=False)
    assert list(sent.items()) == [("Accept", "a"), ("Accept", "b"), ("Content-Length", "10")]


def test_a_re_encoded_body_loses_its_old_length():
    sent = upstream_request_headers(proxy(("Content-Length", "10"), ("X-A", "1")), body_replaced=True)
    assert list(sent.items()) == [("X-A", "1")]


def test_response_headers_keep_everything_but_hop_by_hop():
    answer = proxy(("Transfer-Encoding", "chunked"), ("Content-Type", "text/event-stream"),
                   ("Server", "llama.cpp"), ("Connection", "close"))
    assert list(client_response_headers(answer).items()) == [("Content-Type", "text/event-stream"),
                                                             ("Server", "llama.cpp")]
