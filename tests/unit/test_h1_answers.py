"""Backend answers read by llhttp (``h1.answers.AnswerReader``) and the heads we write."""
from __future__ import annotations

import random

import pytest

from llama_balancer.core.usage import TAIL_BYTES, UsageTail, usage_from_tail
from llama_balancer.h1.answers import AnswerHead, AnswerReader, client_head, request_bytes


def head_of(raw: bytes) -> AnswerHead:
    reader = AnswerReader()
    reader.feed(raw + b"\r\n\r\n")
    assert reader.head is not None
    return reader.head


def test_an_answer_head_tells_its_framing_and_keep_alive():
    chunked = head_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: llama.cpp")
    assert (chunked.status, chunked.chunked, chunked.length, chunked.keep_alive) == (200, True, -1, True)
    sized = head_of(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\nConnection: close")
    assert (sized.status, sized.reason, sized.length, sized.keep_alive) == (503, "Service Unavailable", 7, False)
    until_close = head_of(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain")
    assert (until_close.length, until_close.chunked, until_close.keep_alive) == (-1, False, False)
    assert head_of(b"HTTP/1.0 200 OK\r\nContent-Length: 1").keep_alive is False
    assert head_of(b"HTTP/1.1 204 No Content").has_body is False
    assert head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nKeep-Alive: timeout=5, max=9").keepalive_s == 5.0


@pytest.mark.parametrize("head", [b"SSH-2.0-OpenSSH", b"HTTP/1.1 2000 OK", b"HTTP/1.1 200 OK\r\nno colon here",
                                  b"HTTP/1.1 200 OK\r\nContent-Length: x", b"HTTP/1.1 200 OK\r\nA: b\nC: d"])
def test_a_malformed_answer_head_raises_value_error(head):
    with pytest.raises(ValueError):
        AnswerReader().feed(head + b"\r\n\r\n")


def test_the_client_head_drops_hop_by_hop_headers_and_restates_framing():
    answer = head_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\n"
                     b"X-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Request-Id: theirs\r\nServer: llama.cpp")
    head, keep_alive = client_head(answer, "ours", True)
    assert keep_alive is True
    assert head == (b"HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nX-Request-Id: ours\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")
    sized, _ = client_head(head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5"), "r", False)
    assert sized == b"HTTP/1.1 200 OK\r\nX-Request-Id: r\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    _, keep = client_head(head_of(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain"), "r", True)
    assert keep is False  # a close-delimited body ends the client's connection too
    dechunked, keep = client_head(answer, "r", True, ("X-Ours: 1",), dechunked=True)
    assert b"Transfer-Encoding" not in dechunked and b"X-Ours: 1\r\n" in dechunked and keep is False


def test_an_upstream_request_is_framed_by_its_length():
    assert request_bytes("POST", "/v1/x?a=1", "h:1", [("A", "b")], b"{}") == \
        b"POST /v1/x?a=1 HTTP/1.1\r\nHost: h:1\r\nA: b\r\nContent-Length: 2\r\n\r\n{}"


def _chunked(pieces: list[bytes], trailer: bytes = b"") -> bytes:
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) if i % 2 else b"%x\r\n%s\r\n" % (len(p), p)
                    for i, p in enumerate(pieces)) + b"0\r\n" + trailer + b"\r\n"


@pytest.mark.parametrize("seed", range(40))
def test_a_chunked_answer_split_anyhow_is_relayed_byte_for_byte_and_its_payload_kept(seed):
    rng = random.Random(seed)
    pieces = [bytes(rng.choice(b"ab\r\n0") for _ in range(rng.randint(1, 300))) for _ in range(rng.randint(0, 6))]
    trailer = b"X-Trailer: 1\r\n" if seed % 3 == 0 else b""
    body = _chunked(pieces, trailer)
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 8))))
    kept: list[bytes] = []
    reader, relayed = AnswerReader(UsageTail(kept)), b""
    for start, stop in zip([0, *cuts], [*cuts, len(data)]):
        assert not reader.complete
        relayed += reader.feed(data[start:stop])
    assert reader.complete and reader.reusable
    assert relayed == body
    assert b"".join(kept[1:]) == b"".join(pieces)


def test_an_interim_answer_is_skipped_and_the_body_starts_after_the_final_head():
    reader = AnswerReader()
    body = reader.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert reader.head is not None and reader.head.status == 200 and body == b"ok" and reader.complete


def test_bytes_past_the_declared_length_are_cut_and_the_connection_is_not_reusable():
    reader = AnswerReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA") == b"ok"
    assert reader.complete and not reader.reusable


def test_a_long_stream_keeps_its_first_event_beside_the_tail_for_the_usage_read_there():
    start = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
             b'{"cache_read_input_tokens":10,"input_tokens":1,"output_tokens":0}}}\n\n')
    delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"x"}}\n\n'
    end = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":400}}\n\n'
    pieces = [start + delta] + [delta] * 400 + [end]
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + \
        b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    tail: list[bytes] = []
    reader = AnswerReader(UsageTail(tail))
    for cut in range(0, len(wire), 1000):
        reader.feed(wire[cut:cut + 1000])
    assert reader.complete
    assert tail[0] == start, "the first event stays"
    assert TAIL_BYTES <= sum(map(len, tail[1:])) < TAIL_BYTES * 5 // 4 + 1000, "the rest is the tail (cut now and then)"
    usage = usage_from_tail(b"".join(tail))
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (11, 400)
