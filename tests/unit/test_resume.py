"""Mid-stream resume, the pure parts: which requests may be resumed, what a stream's log
keeps, the continuation request, and the splice that gives its events the original shape.
The shapes are llama-server's (tests/real/test_contract.py holds the sim to them)."""
from __future__ import annotations

from typing import Any

import orjson
import pytest

from llama_balancer.core.errors import UpstreamError
from llama_balancer.core.resume import DONE_EVENT, Splice, StreamLog, continuation, refusal, template_request
from llama_balancer.core.usage import UsageTail, usage_from_tail
from llama_balancer.h1.relay import EventRelay

ENVELOPE = {"created": 1700, "id": "chatcmpl-first", "model": "tiny", "system_fingerprint": "b1",
            "object": "chat.completion.chunk"}


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat_chunk(content: str | None = None, role: bool = False, finish: str | None = None,
               **extra: Any) -> bytes:
    delta: dict[str, Any] = {"role": "assistant", "content": None} if role else {}
    if content is not None:
        delta["content"] = content
    return event({"choices": [{"finish_reason": finish, "index": 0, "delta": delta}], **ENVELOPE, **extra})


def text_chunk(text: str, finish: str | None = None, **extra: Any) -> bytes:
    return event({"choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
                  "created": 2, "model": "tiny", "system_fingerprint": "b2", "object": "text_completion",
                  "id": "chatcmpl-second", **extra})


def decoded(events: list[bytes]) -> list[Any]:
    return [e if e == DONE_EVENT else orjson.loads(e[6:]) for e in events]


# -- which requests


@pytest.mark.parametrize("payload, why", [
    ({"stream": True, "messages": [], "tools": [{"type": "function"}]}, "tools"),
    ({"stream": True, "messages": [], "response_format": {"type": "json_object"}}, "response_format"),
    ({"stream": True, "messages": [], "grammar": "root ::= x"}, "a grammar"),
    ({"stream": True, "messages": [], "logprobs": True}, "logprobs"),
    ({"stream": True, "messages": [], "n": 2}, "n > 1"),
    ({"stream": False, "messages": []}, "not a stream"),
    ({"messages": []}, "not a stream"),
])
def test_what_a_continuation_cannot_reproduce_is_not_resumed(payload, why):
    assert why in (refusal("/v1/chat/completions", payload) or "")


def test_a_plain_chat_or_text_stream_may_be_resumed_and_other_paths_not():
    assert refusal("/v1/chat/completions", {"stream": True, "messages": [], "tools": [], "n": 1}) is None
    assert refusal("/v1/completions", {"stream": True, "prompt": "hi"}) is None
    assert "one string" in refusal("/v1/completions", {"stream": True, "prompt": [1, 2]})
    assert "not resumed" in refusal("/v1/responses", {"stream": True})


# -- the log


def test_the_log_keeps_the_envelope_and_the_text_the_client_was_sent():
    log = StreamLog("chat")
    for chunk in (chat_chunk(role=True), chat_chunk("Hel"), chat_chunk("lo"), chat_chunk(finish="length")):
        log.note(chunk)
    assert log.envelope == ENVELOPE and log.text == "Hello" and log.generated == 2
    assert log.finish == "length" and not log.done and log.resumable() is None
    log.note(DONE_EVENT)
    assert log.done


@pytest.mark.parametrize("delta, why", [
    ({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}, "tool call"),
    ({"reasoning_content": "hmm"}, "reasoning"),
])
def test_a_tool_call_or_reasoning_in_progress_blocks_the_resume(delta, why):
    log = StreamLog("chat")
    log.note(event({"choices": [{"finish_reason": None, "index": 0, "delta": delta}], **ENVELOPE}))
    assert why in (log.resumable() or "")


def test_an_error_event_or_garbage_blocks_the_resume_and_nothing_sent_has_nothing_to_resume():
    assert "no chunk" in StreamLog("chat").resumable()
    log = StreamLog("text")
    log.note(b'data: {"error": {"message": "boom"}}\n\n')
    assert "error event" in log.resumable()
    log = StreamLog("text")
    log.note(b"data: {not json\n\n")
    assert "not JSON" in log.resumable()


# -- the continuation


def test_a_chat_is_continued_as_a_text_completion_of_its_rendered_prompt_and_the_text_so_far():
    log = StreamLog("chat")
    for chunk in (chat_chunk(role=True), chat_chunk("ab"), chat_chunk("c")):
        log.note(chunk)
    payload = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True,
               "stream_options": {"include_usage": True}, "max_tokens": 10, "temperature": 0, "id_slot": 1,
               "chat_template_kwargs": {"x": 1}}
    body = continuation(log, payload, "<|im_start|>assistant\n")
    assert body == {"model": "tiny", "stream": True, "max_tokens": 8, "temperature": 0, "id_slot": 1,
                    "prompt": "<|im_start|>assistant\nabc"}
    assert template_request(payload) == {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}


def test_a_text_completion_continues_its_own_prompt_and_max_completion_tokens_counts_too():
    log = StreamLog("text")
    log.note(text_chunk("x"))
    assert continuation(log, {"prompt": "p", "stream": True, "max_tokens": 1}, "p")["max_tokens"] == 1  # never 0
    chat = StreamLog("chat")
    chat.note(chat_chunk("y"))
    body = continuation(chat, {"messages": [], "stream": True, "max_completion_tokens": 5}, "P")
    assert body["max_tokens"] == 4 and "max_completion_tokens" not in body and "max_tokens" in body


# -- the splice


def chat_log(include_usage: bool) -> StreamLog:
    log = StreamLog("chat", include_usage)
    for chunk in (chat_chunk(role=True), chat_chunk("a"), chat_chunk("b")):
        log.note(chunk)
    return log


TIMINGS = {"cache_n": 14, "prompt_n": 3, "predicted_n": 2, "predicted_ms": 1.0}
USAGE = {"completion_tokens": 2, "prompt_tokens": 17, "total_tokens": 19, "prompt_tokens_details": {"cached_tokens": 14}}


def test_a_chat_continuation_becomes_deltas_of_the_original_stream_with_one_finish_and_its_timings():
    splice = Splice(chat_log(include_usage=False))
    out: list[bytes] = []
    for chunk in (text_chunk("c"), text_chunk("d"), text_chunk("", "length", usage=USAGE, timings=TIMINGS)):
        out += splice.events(chunk)
    out += splice.events(DONE_EVENT)
    first, second, finish, done = decoded(out)
    assert first == {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": "c"}}], **ENVELOPE}
    assert second["choices"][0]["delta"] == {"content": "d"} and "role" not in second["choices"][0]["delta"]
    assert finish["choices"] == [{"finish_reason": "length", "index": 0, "delta": {}}] and "usage" not in finish
    # counted for the whole answer: 2 tokens before, 2 after; the prompt is 17 - 2 = 15
    assert finish["timings"] == {"cache_n": 12, "prompt_n": 3, "predicted_n": 4, "predicted_ms": 1.0}
    assert {k: finish[k] for k in ENVELOPE} == ENVELOPE and done == DONE_EVENT


def test_with_include_usage_the_usage_chunk_follows_the_finish_and_sums_the_completion_tokens():
    splice = Splice(chat_log(include_usage=True))
    finish, usage = decoded(splice.events(text_chunk("", "stop", usage=USAGE, timings=TIMINGS)))
    assert "timings" not in finish and "usage" not in finish
    assert usage["choices"] == [] and usage["id"] == "chatcmpl-first"
    assert usage["usage"] == {"completion_tokens": 4, "prompt_tokens": 15, "total_tokens": 19,
                              "prompt_tokens_details": {"cached_tokens": 14}}
    assert usage["timings"]["predicted_n"] == 4


def test_a_text_continuation_keeps_its_shape_under_the_original_envelope():
    log = StreamLog("text")
    log.note(event({"choices": [{"text": "a", "index": 0, "logprobs": None, "finish_reason": None}],
                    "created": 1, "model": "tiny", "system_fingerprint": "b1", "object": "text_completion",
                    "id": "chatcmpl-first"}))
    splice = Splice(log)
    text, final = decoded(splice.events(text_chunk("b")) + splice.events(
        text_chunk("", "length", usage=USAGE, timings=TIMINGS)))
    assert text["id"] == final["id"] == "chatcmpl-first" and text["created"] == 1 and text["choices"][0]["text"] == "b"
    assert final["choices"][0]["finish_reason"] == "length" and final["usage"]["completion_tokens"] == 3
    assert final["usage"]["prompt_tokens"] == 16 and final["object"] == "text_completion"


# -- the relay


def test_the_relay_sends_whole_events_in_chunks_of_its_own_and_holds_back_half_an_event():
    relay = EventRelay(StreamLog("chat"), UsageTail([]))
    one, two = chat_chunk(role=True), chat_chunk("hi")
    assert relay.feed(one + two[:10]) == b"%x\r\n%b\r\n" % (len(one), one)
    assert relay.feed(two[10:]) == b"%x\r\n%b\r\n" % (len(two), two)
    assert relay.log.text == "hi"
    assert relay.end() == b"0\r\n\r\n"


def test_the_relay_ends_a_stream_broken_after_its_finish_with_done_and_its_tail_holds_the_usage():
    relay = EventRelay(StreamLog("text"), UsageTail(pieces := []))
    relay.feed(text_chunk("a", "length", usage=USAGE) + b"data: [DO")
    assert relay.end(add_done=True) == b"%x\r\n%b\r\n0\r\n\r\n" % (len(DONE_EVENT), DONE_EVENT)
    assert usage_from_tail(b"".join(pieces)).completion_tokens == 2


def test_an_error_event_is_one_chunk_in_openais_error_shape():
    relay = EventRelay(StreamLog("chat"))
    framed = relay.error_event(UpstreamError("backend A closed the connection", kind="reset"))
    size, _, rest = framed.partition(b"\r\n")
    body = rest[:int(size, 16)]
    assert body.startswith(b"data: ") and body.endswith(b"\n\n")
    assert orjson.loads(body[6:])["error"]["type"] == "upstream_error"
    unframed = EventRelay(StreamLog("chat"), framed=False)
    assert unframed.error_event(UpstreamError("x", kind="reset")).startswith(b"data: ")
