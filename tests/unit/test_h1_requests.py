"""The request reader alone (``h1.requests.RequestReader``, llhttp strict): what it refuses,
with which status, and what it hands on. Regression tests for the bugs issue 11 lists and for
those the differential test against h11 (test_h1_differential.py) found."""
from __future__ import annotations

import pytest

from llama_balancer.h1.requests import (END, Body, CodingNotImplemented, HeadTooLarge, MalformedRequest,
                                        RequestHead, RequestReader, VersionNotSupported)

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\n"


def reader(max_field_bytes: int = 8190, max_headers: int = 100) -> RequestReader:
    return RequestReader(max_field_bytes, max_headers)


def read(*pieces: bytes, r: RequestReader | None = None) -> list[tuple]:
    """Feed ``pieces`` one by one; each request as (head, body), in order."""
    r = r or reader()
    for piece in pieces:
        r.feed(piece)
    out: list[tuple] = []
    head, body = None, b""
    for event in r.events:
        if isinstance(event, RequestHead):
            head, body = event, b""
        elif isinstance(event, Body):
            body += event.data
        else:
            assert event is END
            out.append((head, body))
    return out


def refused(*pieces: bytes, r: RequestReader | None = None) -> MalformedRequest:
    with pytest.raises(MalformedRequest) as caught:  # never another exception
        read(*pieces, r=r)
    return caught.value


# -- what is refused, and how


@pytest.mark.parametrize("value", [b"\xc2\xb2", b"\xb2", b"\xd9\xa3", b"+3", b"0x3", b"-1", b"3 3"])
def test_a_content_length_that_is_not_ascii_digits_is_a_400(value):
    error = refused(HEAD + b"Content-Length: " + value + b"\r\n\r\nabc")
    assert error.status == 400 and error.closes


@pytest.mark.parametrize("head", [
    HEAD + b"X-A: a\nSet-Cookie: x\r\n\r\n",  # a bare LF inside a field: two lines to a lenient reader
    HEAD + b"X-A: a\rSet-Cookie: x\r\n\r\n",  # a bare CR
    b"POST / HTTP/1.1\nHost: lb\n\n",  # LF-only lines throughout
    HEAD + b"X-A: a\r\n folded\r\n\r\n",  # obs-fold
])
def test_a_bare_lf_or_cr_or_a_folded_line_in_a_head_is_a_400(head):
    assert refused(head).status == 400


@pytest.mark.parametrize("lengths", [b"Content-Length: 3\r\nContent-Length: 4\r\n",
                                     b"Content-Length: 3\r\nContent-Length: 3\r\n",
                                     b"Content-Length: 3, 3\r\n",
                                     b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"])
def test_duplicate_or_conflicting_framing_headers_are_a_400(lengths):
    assert refused(HEAD + lengths + b"\r\nabc").status == 400


@pytest.mark.parametrize("chunks", [b"0x3\r\nabc\r\n0\r\n\r\n", b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n",
                                    b"-1\r\nabc\r\n0\r\n\r\n", b"3 \r\nabc\r\n0\r\n\r\n",
                                    b"3\nabc\r\n0\r\n\r\n", b"3\r\nabc\n0\r\n\r\n", b"3\r\nabc\r\n0\n\n",
                                    b"3\r\nabcX0\r\n\r\n"])
def test_a_chunk_size_that_is_not_plain_hex_or_a_chunk_line_without_crlf_is_a_400(chunks):
    assert refused(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks).status == 400


@pytest.mark.parametrize("pieces", [(b"GET /\r\n",), (b"GET /", b"\r\n"), (b"GET /v1/models?x=1\r\nHo",)])
def test_an_http09_request_line_is_a_400_at_once_before_the_blank_line(pieces):
    error = refused(*pieces)
    assert error.status == 400 and "HTTP/0.9" in error.message


def test_an_http09_version_is_a_400():
    assert refused(b"GET / HTTP/0.9\r\nHost: lb\r\n\r\n").status == 400


def test_an_http2_request_line_is_a_505():
    with pytest.raises(VersionNotSupported) as caught:
        read(b"GET / HTTP/2.0\r\nHost: lb\r\n\r\n")
    assert caught.value.status == 505 and caught.value.closes


@pytest.mark.parametrize("version", [b"1.2", b"3.0", b"1.10"])
def test_other_versions_are_a_400(version):
    assert refused(b"GET / HTTP/" + version + b"\r\nHost: lb\r\n\r\n").status == 400


def test_more_header_fields_than_allowed_is_a_431():
    with pytest.raises(HeadTooLarge) as caught:
        read(HEAD + b"X: y\r\n" * 10 + b"\r\n", r=reader(max_headers=10))
    assert caught.value.status == 431


def test_a_field_over_the_field_limit_is_a_431():
    with pytest.raises(HeadTooLarge):
        read(HEAD + b"X: " + b"y" * 200 + b"\r\n\r\n", r=reader(max_field_bytes=100))


def test_a_head_over_the_head_limit_is_a_431_even_in_small_fields():
    with pytest.raises(HeadTooLarge):  # 64 KiB whole, however the fields are cut
        read(HEAD + b"X-Filler: " + b"y" * 1000 + b"\r\n" * 1 + (b"X: " + b"y" * 1000 + b"\r\n") * 70,
             r=reader(max_field_bytes=2000, max_headers=1000))


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate,chunked", b"gzip\r\nTransfer-Encoding: chunked"])
def test_a_transfer_coding_besides_chunked_is_a_501(coding):
    # read on, the body would reach the backend de-chunked but still gzip-coded, as if plain
    with pytest.raises(CodingNotImplemented) as caught:
        read(HEAD + b"Transfer-Encoding: " + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert caught.value.status == 501 and caught.value.closes


@pytest.mark.parametrize("pieces", [(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",), (b"\r\n", b"\r\nGET / HTTP/1.1\r\n\r\n"),
                                    (b"\r\n", b"\r\n"), (b"\r\n\r",), (b"\nGET / HTTP/1.1\r\n\r\n",),
                                    (b"\r", b"GET / HTTP/1.1\r\n\r\n")])
def test_more_than_one_empty_line_or_a_bare_cr_or_lf_before_the_first_request_is_a_400_however_split(pieces):
    assert refused(*pieces).message == "empty request line"


@pytest.mark.parametrize("pieces", [(b"\r\nGET / HTTP/1.1\r\n\r\n",), (b"\r", b"\n", b"GET / HTTP/1.1\r\n\r\n")])
def test_one_empty_line_before_the_first_request_is_ignored(pieces):
    ((head, _),) = read(*pieces)
    assert (head.method, head.target) == ("GET", "/")


# -- what is handed on


def test_a_content_length_body_is_read_whole_however_split():
    data = HEAD + b"Content-Length: 5\r\n\r\nhello"
    for cut in range(1, len(data)):
        ((head, body),) = read(data[:cut], data[cut:])
        assert (head.content_length, head.chunked, body) == (5, False, b"hello")


def test_a_chunked_body_is_dechunked_and_its_trailer_fields_never_join_the_head():
    ((head, body),) = read(HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n0123456789\r\n"
                           b"0\r\nAuthorization: Bearer smuggled\r\nX-Request-Id: 1\r\n\r\n")
    assert body == b"hello0123456789" and head.chunked and head.content_length is None
    assert head.headers == [("Host", "lb"), ("Transfer-Encoding", "chunked")]


@pytest.mark.parametrize("split", [False, True])
def test_a_request_asking_to_upgrade_keeps_its_body_and_the_next_request_is_read_after_it(split):
    # curl --http2 -d ... http://... sends this: httptools made llhttp skip the body (the protocol
    # "switched"), so the body was lost, and read as a request when it came in a later read
    inner = b"GET /admin HTTP/1.1\r\nHost: lb\r\n\r\n"
    head = HEAD + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nContent-Length: %d\r\n\r\n" % len(inner)
    after = b"GET /v1/models HTTP/1.1\r\nHost: lb\r\n\r\n"
    requests = read(head, inner + after) if split else read(head + inner + after)
    assert [(h.method, h.target, body) for h, body in requests] == [
        ("POST", "/v1/chat/completions", inner), ("GET", "/v1/models", b"")]


def test_a_connect_request_with_a_chunked_body_is_read_as_any_other():
    requests = read(b"CONNECT h:1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                    b"3\r\nabc\r\n0\r\nX: y\r\n\r\nGET / HTTP/1.1\r\nHost: lb\r\n\r\n")
    assert [(h.method, h.target, h.headers[-1], body) for h, body in requests] == [
        ("CONNECT", "h:1", ("Transfer-Encoding", "chunked"), b"abc"), ("GET", "/", ("Host", "lb"), b"")]


def test_a_request_asking_to_upgrade_without_a_body_is_followed_by_the_next_in_the_same_read():
    requests = read(b"GET /ws HTTP/1.1\r\nHost: lb\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                    b"GET /next HTTP/1.1\r\nHost: lb\r\n\r\n")
    assert [h.target for h, _ in requests] == ["/ws", "/next"]


@pytest.mark.parametrize("first", [b"GET / HTTP/1.0\r\nHost: lb\r\n\r\n",
                                   b"GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n",
                                   b"POST / HTTP/1.1\r\nHost: lb\r\nConnection: close, upgrade\r\nUpgrade: x\r\n"
                                   b"Content-Length: 2\r\n\r\nab"])
def test_after_a_request_that_closes_the_connection_nothing_more_is_read(first):
    r = reader()
    requests = read(first + b"GET /more HTTP/1.1\r\n\r\n", r=r)  # RFC 9112 9.6: not a 400 for the first
    assert [(h.target, h.keep_alive) for h, _ in requests] == [("/", False)]
    events = len(r.events)
    r.feed(b"\x00 anything")
    assert len(r.events) == events


def test_an_http10_request_asking_for_keep_alive_keeps_the_connection():
    requests = read(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\nHost: lb\r\n\r\n")
    assert [(h.target, h.version, h.keep_alive) for h, _ in requests] == [("/a", "1.0", True), ("/b", "1.1", True)]


# -- raw bytes, for a request handed to another server whole


def test_a_request_starting_at_a_feed_keeps_its_raw_bytes_across_feeds():
    r = reader()
    first, rest = b"GET /metrics HTTP/1.1\r\nHo", b"st: lb\r\n\r\n"
    r.feed(first)
    r.feed(rest)
    assert r.raw_known and bytes(r.raw) == first + rest


def test_a_request_beginning_inside_the_same_feed_as_one_served_here_has_no_raw_bytes():
    r = reader()
    r.feed(HEAD + b"Content-Length: 2\r\n\r\nhi" + b"GET /metrics HTTP/1.1\r\nHo")
    assert [type(e) for e in r.events] == [RequestHead, Body, type(END)]
    r.keep_raw(False)  # the caller serves the first itself
    r.feed(b"st: lb\r\n\r\n")
    assert [type(e) for e in r.events][-2:] == [RequestHead, type(END)]
    assert not r.raw_known and not r.raw  # where the second began is not known: it cannot be handed off


def test_the_next_request_in_a_feed_of_its_own_has_its_raw_bytes_again():
    r = reader()
    r.feed(HEAD + b"Content-Length: 0\r\n\r\n")
    r.events.clear()
    second = b"GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n"
    r.feed(second)
    assert r.raw_known and bytes(r.raw) == second


def test_keep_raw_false_lets_the_raw_bytes_go():
    r = reader()
    r.feed(b"POST / HTTP/1.1\r\nHost: lb\r\nContent-Length: 3\r\n\r\n")
    r.keep_raw(False)
    r.feed(b"abc")
    assert not r.raw_known and not r.raw
