"""Usage read from the tail of an answer: OpenAI usage objects and llama-server timings.

The llama-server shapes are copied from a real llama-server (tools/llama_server.py, the
build tests/real uses): a 37-token prompt sent twice, the second time 36 tokens from the cache.
"""
from __future__ import annotations

from llama_balancer.core.usage import Usage, head_of, usage_from_tail

MODEL = b'"model":"tiny-128x2.gguf","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"'
TIMINGS = (b'"timings":{"cache_n":36,"prompt_n":1,"prompt_ms":1.151,"prompt_per_token_ms":1.151,'
           b'"prompt_per_second":868.8,"predicted_n":4,"predicted_ms":2.468,"predicted_per_token_ms":0.82,'
           b'"predicted_per_second":1215.5}')
USAGE = b'"usage":{"completion_tokens":4,"prompt_tokens":37,"total_tokens":41,"prompt_tokens_details":{"cached_tokens":36}}'
CONTENT = b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" link"}}],' + MODEL + b'}\n\n'
FINISH = b'data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],' + MODEL

WARM = Usage(prompt_tokens=37, completion_tokens=4, cached_tokens=36, generation_ms=2.468, prefill_tokens=1,
             prefill_ms=1.151)


def test_llama_server_json_answer_gives_the_whole_prompt_and_its_cached_part():
    answer = b'{"choices":[{"finish_reason":"length","index":0,"message":{"role":"assistant","content":"x"}}],' \
             + MODEL + b',' + USAGE + b',"id":"chatcmpl-1",' + TIMINGS + b'}'
    assert usage_from_tail(answer) == WARM


def test_a_stream_without_a_usage_chunk_reads_timings_in_the_finish_chunk():
    # prompt_n is the uncached part only: the whole prompt is prompt_n + cache_n
    tail = CONTENT + FINISH + b',' + TIMINGS + b'}\n\ndata: [DONE]\n\n'
    assert usage_from_tail(tail) == WARM


def test_a_stream_with_include_usage_reads_usage_and_timings_in_the_final_usage_chunk():
    # the real server moves timings off the finish chunk into the choices-less usage chunk
    tail = (CONTENT + FINISH + b'}\n\n'
            + b'data: {"choices":[],' + MODEL + b',' + USAGE + b',' + TIMINGS + b'}\n\ndata: [DONE]\n\n')
    assert usage_from_tail(tail) == WARM


def test_a_streamed_text_completion_has_usage_and_timings_on_its_finish_chunk():
    tail = (b'data: {"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],'
            b'"usage":{"completion_tokens":3,"prompt_tokens":14,"total_tokens":17,'
            b'"prompt_tokens_details":{"cached_tokens":13}},"id":"c-1","timings":{"cache_n":13,"prompt_n":1,'
            b'"prompt_ms":471.5,"predicted_n":3,"predicted_ms":135.5}}\n\ndata: [DONE]\n\n')
    assert usage_from_tail(tail) == Usage(14, 3, 13, 135.5, 1, 471.5)


def test_the_native_completion_counts_from_timings_not_tokens_cached():
    # tokens_cached is the slot's n_past, generated tokens included (16 here): never a prompt count
    answer = (b'{"content":"abc","stop":true,"tokens_evaluated":14,"tokens_cached":16,'
              b'"timings":{"cache_n":13,"prompt_n":1,"prompt_ms":931.2,"predicted_n":3,"predicted_ms":1165.6}}')
    assert usage_from_tail(answer) == Usage(14, 3, 13, 1165.6, 1, 931.2)


def test_a_cold_prompt_has_zero_cached_tokens_not_none():
    tail = FINISH + b',"timings":{"cache_n":0,"prompt_n":37,"predicted_n":4,"predicted_ms":1570.3}}\n\ndata: [DONE]\n\n'
    assert usage_from_tail(tail) == Usage(37, 4, 0, 1570.3, 37)


def test_an_openai_answer_gives_cached_tokens_as_part_of_prompt_tokens():
    answer = (b'{"choices":[],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,'
              b'"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},'
              b'"completion_tokens_details":{"reasoning_tokens":0}}}')
    assert usage_from_tail(answer) == Usage(2006, 300, 1920, None)


def test_an_openai_answer_without_cache_details_leaves_cached_unknown():
    assert usage_from_tail(b'{"usage":{"prompt_tokens":9,"completion_tokens":5,"total_tokens":14}}') == Usage(9, 5)
    null = b'{"usage":{"prompt_tokens":9,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":null}}}'
    assert usage_from_tail(null) == Usage(9, 5)


def test_cached_tokens_never_exceed_the_prompt():
    assert usage_from_tail(b'{"usage":{"prompt_tokens":9,"completion_tokens":1,'
                           b'"prompt_tokens_details":{"cached_tokens":12}}}') == Usage(9, 1, 9)


def test_the_last_usage_chunk_of_a_stream_wins():
    tail = (b'data: {"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
            b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":5,"total_tokens":14}}\n\n'
            b"data: [DONE]\n\n")
    assert usage_from_tail(tail) == Usage(9, 5, None, None)


def test_numbers_inside_generated_text_are_not_read():
    tail = (b'data: {"choices":[{"delta":{"content":"say \\"prompt_tokens\\": 99 and \\"cache_n\\":5"}}]}\n\n'
            + FINISH + b',' + TIMINGS + b'}\n\ndata: [DONE]\n\n')
    assert usage_from_tail(tail) == WARM


def test_an_answer_without_numbers_gives_none():
    assert usage_from_tail(b'{"error":{"message":"no"}}') is None
    assert usage_from_tail(b'data: {"usage": null}\n\n') is None
    assert usage_from_tail(b"") is None


def test_a_cut_off_tail_still_reads_what_is_whole():
    assert usage_from_tail(b'tokens":12,"completion_tokens":8}, "usage": {}') == Usage(None, 8, None, None)


# --- the other APIs (shapes from a real llama-server's /v1/messages and /v1/responses; Ollama's docs)

ANTHROPIC_START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"chatcmpl-U","type":"message",'
                   b'"role":"assistant","content":[],"model":"tiny","stop_reason":null,"stop_sequence":null,'
                   b'"usage":{"cache_read_input_tokens":10,"input_tokens":1,"output_tokens":0}}}\n\n')
ANTHROPIC_END = (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
                 b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens",'
                 b'"stop_sequence":null},"usage":{"output_tokens":3}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_an_anthropic_answer_counts_the_cached_part_apart_from_input_tokens():
    answer = (b'{"id":"chatcmpl-d","type":"message","role":"assistant","content":[{"type":"text","text":"x"}],'
              b'"model":"tiny","stop_reason":"max_tokens","stop_sequence":null,'
              b'"usage":{"cache_read_input_tokens":10,"input_tokens":1,"output_tokens":3}}')
    assert usage_from_tail(answer) == Usage(11, 3, 10, None)
    created = b'{"usage":{"input_tokens":5,"cache_creation_input_tokens":20,"cache_read_input_tokens":0,"output_tokens":2}}'
    assert usage_from_tail(created) == Usage(25, 2, 0, None)


def test_an_anthropic_stream_has_the_prompt_in_message_start_and_the_output_in_the_last_message_delta():
    assert usage_from_tail(ANTHROPIC_START + ANTHROPIC_END) == Usage(11, 3, 10, None)
    assert usage_from_tail(ANTHROPIC_END) == Usage(None, 3, None, None), "message_start out of the tail"


def test_the_first_event_of_an_answer_is_kept_beside_the_tail():
    delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}\n\n'
    assert head_of(ANTHROPIC_START + delta) == ANTHROPIC_START
    assert head_of(b'{"usage":{"prompt_tokens":9}}') == b"", "a JSON body has no events"
    assert head_of(b"data: " + b"x" * 4096 + b"\n\n") == b"", "an event longer than HEAD_BYTES"
    assert usage_from_tail(head_of(ANTHROPIC_START + delta) + delta * 3 + ANTHROPIC_END) == Usage(11, 3, 10, None)


def test_a_response_counts_input_tokens_with_their_cached_part():
    answer = (b'{"completed_at":1,"created_at":1,"id":"resp_n","model":"tiny","object":"response","output":[],'
              b'"status":"completed","usage":{"input_tokens":11,"output_tokens":3,"total_tokens":14,'
              b'"input_tokens_details":{"cached_tokens":10}}}')
    assert usage_from_tail(answer) == Usage(11, 3, 10, None)
    completed = (b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"resp_Q",'
                 b'"usage":{"input_tokens":11,"output_tokens":3,"total_tokens":14,"input_tokens_details":'
                 b'{"cached_tokens":10}}},"timings":{"cache_n":10,"prompt_n":1,"prompt_ms":9.7,"predicted_n":3,'
                 b'"predicted_ms":13.962}}\n\n')
    assert usage_from_tail(completed) == Usage(11, 3, 10, 13.962, 1, 9.7)


def test_ollama_counts_come_from_the_last_line_and_eval_duration_is_in_nanoseconds():
    tail = (b'{"model":"m","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"x"},"done":false}\n'
            b'{"model":"m","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":""},"done":true,'
            b'"done_reason":"stop","total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,'
            b'"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}\n')
    assert usage_from_tail(tail) == Usage(26, 282, None, 4535.599)
    embedded = b'{"model":"m","embeddings":[[0.1]],"total_duration":1,"load_duration":1,"prompt_eval_count":8}'
    assert usage_from_tail(embedded) == Usage(8, None, None, None)


def test_the_other_apis_counts_are_found_after_a_long_text():
    text = b"word " * 1200  # 6 KB of output before the usage
    completed = (b'event: response.completed\ndata: {"type":"response.completed","response":{"output":[{"content":'
                 b'[{"type":"output_text","text":"' + text + b'"}]}],"usage":{"input_tokens":11,"output_tokens":1200,'
                 b'"total_tokens":1211,"input_tokens_details":{"cached_tokens":10}}},"timings":{"cache_n":10,'
                 b'"prompt_n":1,"predicted_n":1200,"predicted_ms":900.5}}\n\n')
    assert usage_from_tail(completed[-8192:]) == Usage(11, 1200, 10, 900.5, 1)
    message = (b'{"content":[{"type":"text","text":"' + text + b'"}],"stop_reason":"end_turn",'
               b'"usage":{"cache_read_input_tokens":0,"input_tokens":20,"output_tokens":1200}}')
    assert usage_from_tail(message) == Usage(20, 1200, 0, None)
