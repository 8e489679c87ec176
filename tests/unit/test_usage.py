"""Usage read from the tail of an answer: OpenAI usage objects and llama-server timings."""
from __future__ import annotations

from llama_balancer.core.usage import Usage, usage_from_tail

JSON_ANSWER = (b'{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":37,"completion_tokens":64,'
               b'"total_tokens":101,"prompt_tokens_details":{"cached_tokens":0}},'
               b'"timings":{"cache_n":12,"prompt_n":25,"prompt_ms":4.6,"predicted_n":64,"predicted_ms":60.9}}')


def test_a_json_answer_gives_its_usage_and_the_generation_time():
    assert usage_from_tail(JSON_ANSWER) == Usage(37, 64, 12, 60.9)


def test_a_stream_without_a_usage_chunk_falls_back_to_llama_server_timings():
    tail = (b'data: {"choices":[{"delta":{"content":" w9"}}]}\n\n'
            b'data: {"choices":[{"finish_reason":"length","delta":{}}],'
            b'"timings":{"cache_n":30,"prompt_n":7,"predicted_n":10,"predicted_ms":250.0}}\n\ndata: [DONE]\n\n')
    assert usage_from_tail(tail) == Usage(37, 10, 30, 250.0)


def test_the_last_usage_chunk_of_a_stream_wins():
    tail = (b'data: {"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
            b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":5,"total_tokens":14}}\n\n'
            b"data: [DONE]\n\n")
    assert usage_from_tail(tail) == Usage(9, 5, None, None)


def test_an_answer_without_numbers_gives_none():
    assert usage_from_tail(b'{"error":{"message":"no"}}') is None
    assert usage_from_tail(b'data: {"usage": null}\n\n') is None
    assert usage_from_tail(b"") is None


def test_a_cut_off_tail_still_reads_what_is_whole():
    assert usage_from_tail(b'tokens":12,"completion_tokens":8}, "usage": {}') == Usage(None, 8, None, None)
