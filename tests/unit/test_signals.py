"""core/signals.py: Prometheus text, llama-server and vLLM answers, the fused load."""
from __future__ import annotations

import math

import orjson
import pytest

from llama_balancer.core.signals import (
    BackendLoad,
    LlamaMetrics,
    Sample,
    Slot,
    SlotsInfo,
    VllmMetrics,
    emptied_idle_slot,
    free_capacity,
    fuse_load,
    guess_kind,
    llamacpp_load,
    parse_llamacpp_health,
    parse_llamacpp_metrics,
    parse_llamacpp_props,
    parse_llamacpp_slots,
    parse_prometheus,
    parse_vllm_metrics,
    prometheus_samples,
    vllm_load,
)

# As a real llama-server (--parallel 2 --metrics) answers, from llama-server-facts.md.
SLOTS_UNUSED = b'[{"id":0,"n_ctx":2048,"speculative":false,"is_processing":false},' \
               b'{"id":1,"n_ctx":2048,"speculative":false,"is_processing":false}]'
SLOTS_ONE_BUSY = orjson.dumps([
    {"id": 0, "id_task": 12, "n_ctx": 2048, "speculative": False, "is_processing": True,
     "params": {"n_predict": 64, "temperature": 0.8, "stream": True},
     "n_prompt_tokens": 37, "n_prompt_tokens_processed": 1, "n_prompt_tokens_cache": 36,
     "next_token": [{"has_next_token": True, "n_remain": 50, "n_decoded": 14}]},
    {"id": 1, "n_ctx": 2048, "speculative": False, "is_processing": False},
])
NO_SLOT = b'{"error":{"code":503,"message":"no slot available","type":"unavailable_error"}}'
LOADING = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'

LLAMA_METRICS = b"""\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 148
# HELP llamacpp:prompt_seconds_total Prompt process time
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 0.161
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 256
# HELP llamacpp:prompt_tokens_cached_total Number of prompt tokens served from the cache.
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total 52
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode counter
llamacpp:n_busy_slots_per_decode 1.73
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""

MODEL = 'model_name="Qwen/Qwen2.5-7B-Instruct"'
VLLM_METRICS = f"""\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 12081.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",{MODEL}}} 3.0
vllm:num_requests_running{{engine="1",{MODEL}}} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",{MODEL}}} 4.0
vllm:num_requests_waiting{{engine="1",{MODEL}}} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",{MODEL}}} 0.4213
vllm:kv_cache_usage_perc{{engine="1",{MODEL}}} 0.3
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.001",{MODEL}}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",{MODEL}}} 17.0
vllm:time_to_first_token_seconds_count{{engine="0",{MODEL}}} 17.0
""".encode()

GARBAGE = [b"", b"null", b"42", b'"ok"', b"{", b"\xff\xfe\x00", b"[1, 2, 3]", b"<html>oops</html>"]


# --- parse_prometheus ---------------------------------------------------------------------


def test_prometheus_skips_help_and_type_lines_and_reads_plain_samples():
    assert parse_prometheus("# HELP a x\n# TYPE a gauge\na 1\nb 2.5\n") == {"a": 1.0, "b": 2.5}


def test_prometheus_sums_samples_of_one_name_over_their_labels():
    text = 'req{model="a"} 1\nreq{model="b"} 2\nreq 4\n'

    assert parse_prometheus(text) == {"req": 7.0}


def test_prometheus_ignores_timestamps():
    assert parse_prometheus("a 3 1712345678000\n") == {"a": 3.0}


def test_prometheus_reads_infinities_and_drops_nan():
    values = parse_prometheus("up +Inf\ndown -Inf\nnothing NaN\nhalf NaN\nhalf 2\n")

    assert values == {"up": math.inf, "down": -math.inf, "half": 2.0}


def test_prometheus_label_values_may_hold_braces_quotes_and_commas():
    samples = prometheus_samples('m{path="/a{b}",q="say \\"hi\\", ok",nl="x\\ny"} 5\n')

    assert samples == [Sample("m", {"path": "/a{b}", "q": 'say "hi", ok', "nl": "x\ny"}, 5.0)]


def test_prometheus_accepts_bytes_crlf_and_blank_lines():
    assert parse_prometheus(b"\r\na 1\r\n\r\n# EOF\r\n") == {"a": 1.0}


@pytest.mark.parametrize("line", ["a", "a b", "ab1", "{x=\"1\"} 2", "1abc 3", 'a{x="1" 2', "a 1 2 3"])
def test_prometheus_skips_broken_lines_and_keeps_the_rest(line):
    assert parse_prometheus(f"ok 1\n{line}\n") == {"ok": 1.0}


def test_prometheus_of_garbage_is_empty_not_an_error():
    assert parse_prometheus(b"\xff\xfe<html>\x00") == {}


# --- llama-server /slots, /metrics, /props, /health --------------------------------------


def test_unused_slots_are_all_idle():
    info = parse_llamacpp_slots(SLOTS_UNUSED)

    assert info is not None
    assert (info.total, info.busy, info.idle, info.idle_ids) == (2, 0, 2, (0, 1))


def test_slot_after_use_reports_its_prompt_and_cache_counts():
    info = parse_llamacpp_slots(SLOTS_ONE_BUSY)

    assert info is not None
    assert info.busy_ids == (0,) and info.idle_ids == (1,)
    assert info.slots[0] == Slot(0, True, 2048, None, 37, 36, id_task=12)


def test_older_servers_state_field_is_read_as_processing():
    info = parse_llamacpp_slots(b'[{"id":0,"state":1},{"id":1,"state":0}]')

    assert info is not None and info.busy_ids == (0,) and info.idle_ids == (1,)


def test_slot_without_any_state_counts_as_busy_so_it_is_never_pinned():
    info = parse_llamacpp_slots(b'[{"id":3}]')

    assert info is not None and info.busy_ids == (3,)


def test_slot_without_an_id_takes_its_position():
    info = parse_llamacpp_slots(b'[{"is_processing":false},{"is_processing":true}]')

    assert info is not None and info.idle_ids == (0,) and info.busy_ids == (1,)


def test_slots_naming_their_model_can_be_narrowed_to_one_instance():
    body = orjson.dumps([
        {"id": 0, "is_processing": True, "model": "m"},
        {"id": 1, "is_processing": False, "model": "m"},
        {"id": 2, "is_processing": False, "model": "m-2"},
    ])
    info = parse_llamacpp_slots(body)

    assert info is not None
    assert info.for_model("m-2").idle_ids == (2,)
    assert info.for_model("m").total == 2


def test_slots_without_model_names_are_not_narrowed():
    info = parse_llamacpp_slots(SLOTS_UNUSED)

    assert info is not None and info.for_model("anything") is info


def test_the_simulators_slots_parse_like_a_real_servers():
    from llama_balancer.sim.slots import Slot as SimSlot

    body = orjson.dumps([SimSlot(id=4, instance="m-2", n_ctx=512, busy=True).to_json()])
    info = parse_llamacpp_slots(body)

    assert info is not None
    assert info.slots == (Slot(4, True, 512, "m-2"),)


@pytest.mark.parametrize("body", [NO_SLOT, b"[]", b'[1, "x", null]', *GARBAGE])
def test_slots_error_bodies_and_garbage_give_none(body):
    assert parse_llamacpp_slots(body) is None


def test_llamacpp_metrics_give_live_gauges_and_token_counters():
    metrics = parse_llamacpp_metrics(LLAMA_METRICS)

    assert metrics == LlamaMetrics(2, 1, 148.0, 52.0, 256.0, 1.73)
    assert metrics.cache_hit_ratio == pytest.approx(52 / 200)


def test_llamacpp_metrics_without_counters_have_no_cache_ratio():
    metrics = parse_llamacpp_metrics(b"llamacpp:requests_processing 0\n")

    assert metrics == LlamaMetrics(0, 0)
    assert metrics.cache_hit_ratio is None


def test_the_simulators_metrics_parse_like_a_real_servers():
    from llama_balancer.sim.metrics import Stats, render_metrics

    metrics = parse_llamacpp_metrics(render_metrics(Stats(), []).encode())

    assert metrics is not None and (metrics.requests_processing, metrics.requests_deferred) == (0, 0)


@pytest.mark.parametrize("body", [b'{"error":{"code":501,"message":"This server does not support metrics endpoint."}}',
                                  VLLM_METRICS, *GARBAGE])
def test_llamacpp_metrics_off_or_foreign_give_none(body):
    assert parse_llamacpp_metrics(body) is None


def test_props_give_total_slots():
    body = orjson.dumps({"default_generation_settings": {"n_ctx": 2048}, "total_slots": 2,
                         "model_path": "/m.gguf", "chat_template": "...", "build_info": "b1"})

    assert parse_llamacpp_props(body) == 2


@pytest.mark.parametrize("body", [b'{"total_slots":0}', b'{"total_slots":"2"}', b'{"total_slots":true}', *GARBAGE])
def test_props_without_a_positive_slot_count_give_none(body):
    assert parse_llamacpp_props(body) is None


@pytest.mark.parametrize(("status", "body", "up"), [
    (200, b'{"status":"ok"}', True),
    (200, b"", True),
    (200, b"garbage", True),
    (503, LOADING, False),
    (503, b'{"status":"loading model"}', False),
    (200, b'{"status":"loading model"}', False),
    (200, b'{"status":"error"}', False),
    (404, b'{"error":{"code":404}}', False),
    (500, b"", False),
])
def test_health_is_up_on_200_only_and_down_while_loading(status, body, up):
    assert parse_llamacpp_health(status, body) is up


# --- vLLM /metrics ------------------------------------------------------------------------


def test_vllm_metrics_sum_counts_over_labels_and_take_the_highest_kv_usage():
    assert parse_vllm_metrics(VLLM_METRICS) == VllmMetrics(running=5, waiting=4, kv_usage=0.4213)


def test_vllm_older_gpu_cache_name_is_read_when_the_new_one_is_absent():
    text = b"vllm:num_requests_running 1\nvllm:gpu_cache_usage_perc 0.25\n"

    assert parse_vllm_metrics(text) == VllmMetrics(1, 0, 0.25)


def test_vllm_new_kv_name_wins_over_the_old_one():
    text = b"vllm:num_requests_running 1\nvllm:gpu_cache_usage_perc 0.9\nvllm:kv_cache_usage_perc 0.1\n"

    assert parse_vllm_metrics(text).kv_usage == 0.1


def test_vllm_swapped_requests_count_as_waiting():
    text = b"vllm:num_requests_running 2\nvllm:num_requests_waiting 1\nvllm:num_requests_swapped 3\n"

    assert parse_vllm_metrics(text) == VllmMetrics(2, 4, None)


def test_vllm_kv_usage_given_in_percent_is_brought_to_a_fraction():
    assert parse_vllm_metrics(b"vllm:num_requests_running 0\nvllm:kv_cache_usage_perc 42\n").kv_usage == 0.42


@pytest.mark.parametrize("body", [LLAMA_METRICS, *GARBAGE])
def test_vllm_metrics_missing_or_foreign_give_none(body):
    assert parse_vllm_metrics(body) is None


# --- kinds, load views, fusion ------------------------------------------------------------


@pytest.mark.parametrize(("server", "props", "metrics", "kind"), [
    ("llama.cpp", None, None, "llama.cpp"),
    (None, b'{"total_slots":4}', None, "llama.cpp"),
    (None, None, LLAMA_METRICS, "llama.cpp"),
    ("uvicorn", b'{"detail":"Not Found"}', VLLM_METRICS, "vllm"),
    ("nginx", None, b"", "openai"),
    (None, None, None, "openai"),
])
def test_auto_kind_is_guessed_from_server_header_props_and_metric_names(server, props, metrics, kind):
    assert guess_kind(server, props, metrics) == kind


def test_llamacpp_load_takes_counts_from_metrics_and_slot_numbers_from_slots():
    slots = parse_llamacpp_slots(SLOTS_ONE_BUSY)

    load = llamacpp_load(parse_llamacpp_metrics(LLAMA_METRICS), slots)

    assert load == BackendLoad(running=2, waiting=1, slots_total=2, slots_idle=1)


def test_llamacpp_load_without_metrics_counts_busy_slots_as_running():
    load = llamacpp_load(None, parse_llamacpp_slots(SLOTS_ONE_BUSY))

    assert load == BackendLoad(1, 0, 2, 1)


def test_llamacpp_load_without_slots_uses_the_props_slot_count():
    assert llamacpp_load(LlamaMetrics(1, 0), None, total_slots=4) == BackendLoad(1, 0, 4, None)


def test_llamacpp_and_vllm_load_without_any_signal_are_none():
    assert llamacpp_load(None, None, 4) is None
    assert vllm_load(None) is None


def test_vllm_load_carries_kv_usage():
    assert vllm_load(VllmMetrics(3, 2, 0.5)) == BackendLoad(3, 2, kv_usage=0.5)


FRESH, STALE, MAX_AGE = 0.5, 3.0, 2.0


@pytest.mark.parametrize(("own", "polled", "age", "load"), [
    (0, None, FRESH, 0),  # nothing polled: own count
    (3, BackendLoad(1, 0), FRESH, 3),  # poll lags our own new requests
    (1, BackendLoad(2, 3), FRESH, 5),  # others use the backend too: running + waiting
    (1, BackendLoad(2, 3), STALE, 1),  # stale poll is ignored
    (1, BackendLoad(2, 3), MAX_AGE, 5),  # exactly max age is still fresh
    (1, BackendLoad(2, 3), math.nan, 1),  # unknown age is stale
    (-1, BackendLoad(-2, -3), FRESH, 0),  # never negative
])
def test_fused_load_is_the_larger_of_own_and_fresh_polled(own, polled, age, load):
    assert fuse_load(own, polled, age, MAX_AGE) == load


@pytest.mark.parametrize(("request_max", "server_load", "slots", "slots_load", "room"), [
    (None, 5, None, 5, None),  # no limit known
    (4, 1, None, 0, 3),
    (4, 6, None, 0, 0),  # over the limit is full, not negative
    (None, 0, 2, 1, 1),
    (4, 1, 2, 2, 0),  # slots are the tighter limit
    (2, 2, 4, 1, 0),  # request-max is the tighter limit
])
def test_free_capacity_is_the_tighter_known_limit(request_max, server_load, slots, slots_load, room):
    assert free_capacity(request_max, server_load, slots, slots_load) == room


def test_slots_info_of_no_slots_is_empty():
    info = SlotsInfo(())

    assert (info.total, info.busy, info.idle) == (0, 0, 0)


def test_an_idle_slot_emptied_by_the_server_is_recognised():
    """/slots of a kv-unified llama-server after another slot started (seen on a real one):
    the idle slot keeps its id_task, its n_prompt_tokens drops to 0."""
    used = parse_llamacpp_slots(b'[{"id":0,"n_ctx":4096,"is_processing":false,"id_task":3,"n_prompt_tokens":1094},'
                                b'{"id":1,"n_ctx":4096,"is_processing":false}]')
    emptied = parse_llamacpp_slots(b'[{"id":0,"n_ctx":4096,"is_processing":false,"id_task":3,"n_prompt_tokens":0},'
                                   b'{"id":1,"n_ctx":4096,"is_processing":true,"id_task":5,"n_prompt_tokens":0}]')
    assert emptied_idle_slot(None, emptied) and emptied_idle_slot(used, emptied)
    assert not emptied_idle_slot(None, used)  # a never-used slot (no id_task) is not "emptied"
    busy_empty = parse_llamacpp_slots(b'[{"id":0,"is_processing":true,"id_task":3,"n_prompt_tokens":0}]')
    assert not emptied_idle_slot(used, busy_empty)  # a slot starting a task is not idle
