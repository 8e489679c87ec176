"""The hand-written HTTP/1.1 pieces of the native data path, on plain bytes (no sockets)."""
from __future__ import annotations

import random

import pytest

from llama_balancer.http.front import NATIVE_PATHS
from llama_balancer.http.request_head import MalformedRequest, check_request_line, parse_request_head
from llama_balancer.io.http1 import ChunkedScanner, client_head, parse_answer_head, request_bytes

HEAD = b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\nContent-Length: 42"


def test_a_plain_post_head_is_served_natively_with_its_headers_as_sent():
    head = parse_request_head(HEAD + b"\r\nX-Tab: a\tb", NATIVE_PATHS, 100)
    assert head is not None
    assert (head.method, head.target, head.path, head.length, head.keep_alive) == \
        ("POST", "/v1/chat/completions?x=1", "/v1/chat/completions", 42, True)
    assert ("X-Tab", "a\tb") in head.headers and ("Content-Type", "application/json") in head.headers


def test_connection_close_is_noted():
    head = parse_request_head(HEAD + b"\r\nConnection: close", NATIVE_PATHS, 100)
    assert head is not None and head.keep_alive is False


@pytest.mark.parametrize("head", [
    b"GET /v1/models HTTP/1.1\r\nHost: lb",  # not a routed POST
    b"POST /v1/other HTTP/1.1\r\nHost: lb\r\nContent-Length: 2",  # not a routed path
    b"POST /v1/chat/completions HTTP/1.0\r\nHost: lb\r\nContent-Length: 2",  # HTTP/1.0
    b"POST http://x/v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 2",  # absolute form
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb",  # no Content-Length
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\nExpect: 100-continue",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\nUpgrade: h2c",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\nX-A: b\nX-Smuggled: c",  # bare LF
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\nX-A: b\rc",  # bare CR
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\nX-A: b\x00",  # control byte
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length : 2",  # space before colon
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\n folded: 2",  # obs-fold
    b"POST /v1/chat/completions HTTP/1.1\r\nHost lb\r\nContent-Length: 2",  # no colon
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\nX A: b",  # not a token
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\n: b",  # empty name
])
def test_anything_but_the_plain_case_goes_to_aiohttp(head):
    assert parse_request_head(head, NATIVE_PATHS, 100) is None


@pytest.mark.parametrize("head", [
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\nContent-Length: 3",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: -2",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: \xb2",  # latin-1 superscript two
    "POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: \u0663".encode(),  # Arabic-Indic 3
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: ",
    b"POST /v1/chat/completions?a=1\tb=2 HTTP/1.1\r\nHost: lb\r\nContent-Length: 2",
])
def test_a_head_no_parser_may_accept_is_refused_not_handed_over(head):
    """Handing these over would leave the answer to aiohttp's text/plain 400 (or, for the
    Content-Length, crash int()): the front refuses them itself, in OpenAI style."""
    with pytest.raises(MalformedRequest):
        parse_request_head(head, NATIVE_PATHS, 100)


def test_a_content_length_of_many_digits_is_too_large_not_a_crash():
    head = parse_request_head(HEAD.replace(b": 42", b": " + b"9" * 5000), NATIVE_PATHS, 100)
    assert head is not None and head.length > 1 << 40


@pytest.mark.parametrize("line", [
    b"", b"GET /", b"GET / HTTP/1.1 ", b"GET  / HTTP/1.1", b"GET /a\tb HTTP/1.1", b"GET /a\x00 HTTP/1.1",
    b"GET /a\x7f HTTP/1.1", b"GET /\xff HTTP/1.1", b"GET / HTTP/1.1\r", b"G(T / HTTP/1.1", b"GET / HTTP/1",
    b"GET / http/1.1", b"GET / HTTP/2.0", b"GET\t/ HTTP/1.1", b"GARBAGE",
])
def test_a_request_line_that_is_not_rfc_9112_is_refused(line):
    with pytest.raises(MalformedRequest):
        check_request_line(line)


@pytest.mark.parametrize("line", [b"GET / HTTP/1.1", b"POST /v1/x?a=1&b=%09 HTTP/1.0", b"M-SEARCH * HTTP/1.1"])
def test_a_plain_request_line_passes(line):
    check_request_line(line)


def test_more_headers_than_allowed_go_to_aiohttp():
    head = HEAD + b"".join(b"\r\nX-%d: v" % i for i in range(10))
    assert parse_request_head(head, NATIVE_PATHS, 13) is not None
    assert parse_request_head(head, NATIVE_PATHS, 12) is None


def test_an_answer_head_tells_its_framing_and_keep_alive():
    chunked = parse_answer_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: llama.cpp")
    assert (chunked.status, chunked.chunked, chunked.length, chunked.keep_alive) == (200, True, -1, True)
    sized = parse_answer_head(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\nConnection: close")
    assert (sized.status, sized.reason, sized.length, sized.keep_alive) == (503, "Service Unavailable", 7, False)
    until_close = parse_answer_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain")
    assert (until_close.length, until_close.chunked, until_close.keep_alive) == (-1, False, False)
    old = parse_answer_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1")
    assert old.keep_alive is False
    assert parse_answer_head(b"HTTP/1.1 204 No Content").has_body is False


@pytest.mark.parametrize("head", [b"SSH-2.0-OpenSSH", b"HTTP/1.1 2000 OK", b"HTTP/1.1 200 OK\r\nno colon here",
                                  b"HTTP/1.1 200 OK\r\nContent-Length: x"])
def test_a_malformed_answer_head_raises_value_error(head):
    with pytest.raises(ValueError):
        parse_answer_head(head)


def test_the_client_head_drops_hop_by_hop_headers_and_restates_framing():
    answer = parse_answer_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\n"
                               b"X-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Request-Id: theirs\r\nServer: llama.cpp")
    head, keep_alive = client_head(answer, "ours", True)
    assert keep_alive is True
    assert head == (b"HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nX-Request-Id: ours\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")
    sized, _ = client_head(parse_answer_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5"), "r", False)
    assert sized == b"HTTP/1.1 200 OK\r\nX-Request-Id: r\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    _, keep = client_head(parse_answer_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain"), "r", True)
    assert keep is False  # a close-delimited body ends the client's connection too


def test_an_upstream_request_is_framed_by_its_length():
    assert request_bytes("POST", "/v1/x?a=1", "h:1", [("A", "b")], b"{}") == \
        b"POST /v1/x?a=1 HTTP/1.1\r\nHost: h:1\r\nA: b\r\nContent-Length: 2\r\n\r\n{}"


def _chunked(pieces: list[bytes], trailer: bytes = b"") -> bytes:
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) if i % 2 else b"%x\r\n%s\r\n" % (len(p), p)
                    for i, p in enumerate(pieces)) + b"0\r\n" + trailer + b"\r\n"


@pytest.mark.parametrize("seed", range(40))
def test_the_chunked_scanner_finds_the_end_and_the_payload_however_the_bytes_are_split(seed):
    rng = random.Random(seed)
    pieces = [bytes(rng.choice(b"ab\r\n0") for _ in range(rng.randint(1, 300))) for _ in range(rng.randint(0, 6))]
    trailer = b"X-Trailer: 1\r\n" if seed % 3 == 0 else b""
    wire = _chunked(pieces, trailer)
    extra = b"HTTP/1.1 200 OK\r\n" if seed % 2 else b""  # the next answer's bytes must not count
    data = wire + extra
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 8))))
    scanner, kept, consumed, ended_at = ChunkedScanner(), [], 0, None
    for start, stop in zip([0, *cuts], [*cuts, len(data)]):
        end = scanner.feed(data[start:stop], kept.append)
        if end >= 0:
            ended_at = consumed + end
            break
        consumed += stop - start
    assert ended_at == len(wire)
    assert b"".join(kept) == b"".join(pieces)


def test_broken_chunk_framing_raises_value_error():
    with pytest.raises(ValueError):
        ChunkedScanner().feed(b"zz\r\nhello\r\n", lambda piece: None)
