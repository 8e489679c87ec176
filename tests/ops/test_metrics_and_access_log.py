"""Prometheus /metrics and the JSON access log, fed by real requests through the balancer."""
from __future__ import annotations

import json

import pytest

from tests.conftest import server_entry, wait_until

MODEL = "m"


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, matching all given labels."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
async def observed(sims, balancer, tmp_path):
    pc1 = await sims(name="PC1", models=[MODEL])
    log_path = tmp_path / "access.log"
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {MODEL: ["PC1"]},
                              "balancer": {"access_log": str(log_path)}})
    return pc1, runtime, log_path


async def chat(http, runtime, stream: bool, **headers):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "stream": stream}
    async with http.post(runtime.url + "/v1/chat/completions", json=body, headers=headers) as response:
        await response.read()
        return response


async def test_metrics_count_requests_tokens_and_latency_for_streamed_and_plain_answers(observed, http):
    _, runtime, _ = observed
    await chat(http, runtime, stream=False)
    await chat(http, runtime, stream=True)
    async with http.get(runtime.url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert sample(text, "llama_balancer_requests_total", model=MODEL, server="PC1", status="200",
                  endpoint="/v1/chat/completions") == 2
    # Streamed usage comes from llama-server's timings in the finish chunk.
    assert sample(text, "llama_balancer_completion_tokens_total", model=MODEL, server="PC1") == 12
    assert sample(text, "llama_balancer_prompt_tokens_total", model=MODEL, server="PC1") > 0
    assert sample(text, "llama_balancer_request_duration_seconds_count", model=MODEL) == 2
    # TTFT counts the streamed answer only: a plain answer's first byte is its whole body.
    assert sample(text, "llama_balancer_time_to_first_token_seconds_count", model=MODEL) == 1
    assert sample(text, "llama_balancer_inflight_requests", server="PC1") == 0
    states = {s: sample(text, "llama_balancer_backend_health", server="PC1", state=s) for s in ("idle", "busy", "invalid")}
    assert sorted(states.values()) == [0.0, 0.0, 1.0] and states["invalid"] == 0.0


async def test_unknown_model_names_do_not_explode_metric_labels(observed, http):
    _, runtime, _ = observed
    for index in range(3):
        body = {"model": f"random-{index}", "messages": []}
        async with http.post(runtime.url + "/v1/chat/completions", json=body) as response:
            await response.read()
    async with http.get(runtime.url + "/metrics") as response:
        text = await response.text()
    assert "random-0" not in text
    assert sample(text, "llama_balancer_requests_total", model="(other)") == 3


async def test_every_request_gets_an_id_and_one_json_access_log_line(observed, http):
    _, runtime, log_path = observed
    first = await chat(http, runtime, stream=True)
    second = await chat(http, runtime, stream=False, **{"X-Request-Id": "client-chosen-1"})
    assert len(first.headers["X-Request-Id"]) == 32
    assert second.headers["X-Request-Id"] == "client-chosen-1"

    def lines():
        return [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []

    await wait_until(lambda: len(lines()) == 2)
    entry = lines()[1]
    assert entry["request_id"] == "client-chosen-1"
    assert (entry["model"], entry["server"], entry["instance"], entry["status"]) == (MODEL, "PC1", MODEL, 200)
    assert entry["reason"] in ("sticky", "free-instance", "idle")
    assert entry["client"] == "127.0.0.1" and entry["completion_tokens"] == 6
    assert entry["ttft_ms"] >= 0 and entry["duration_ms"] >= entry["ttft_ms"]
    assert entry["queue_wait_ms"] == 0.0 and entry["outcome"] == "completed"


async def test_the_request_id_reaches_the_backend_and_error_answers(observed, http):
    pc1, runtime, _ = observed
    await chat(http, runtime, stream=False, **{"X-Request-Id": "trace-42"})
    assert pc1.events[-1]["body"]["model"] == MODEL
    async with http.post(runtime.url + "/v1/chat/completions", data=b"{bad") as response:
        assert response.status == 400 and len(response.headers["X-Request-Id"]) == 32
    async with http.put(runtime.url + "/sim/echo", data=b"x", headers={"X-Request-Id": "trace-43"}) as response:
        echo = await response.json()
    assert {k.lower(): v for k, v in echo["headers"].items()}["x-request-id"] == "trace-43"


async def test_cached_prompt_tokens_are_counted_so_the_hit_ratio_can_be_computed(observed, http):
    """The ratio is llama_balancer_prompt_cached_tokens_total / llama_balancer_prompt_tokens_total
    per server and model; both agree with what the backend itself reported (timings)."""
    pc1, runtime, _ = observed
    for stream in (False, True, False):
        await chat(http, runtime, stream=stream)
    async with http.get(runtime.url + "/metrics") as response:
        text = await response.text()
    done = [e for e in pc1.events if e["path"] == "/v1/chat/completions"]
    assert len(done) == 3, pc1.events
    prompt = sample(text, "llama_balancer_prompt_tokens_total", model=MODEL, server="PC1")
    cached = sample(text, "llama_balancer_prompt_cached_tokens_total", model=MODEL, server="PC1")
    assert prompt == sum(e["prompt_n"] + e["cache_n"] for e in done)
    assert cached == sum(e["cache_n"] for e in done)
    assert 0 < cached < prompt  # the same prompt again: mostly from the slot's cache
    assert "# TYPE llama_balancer_prompt_cached_tokens_total counter" in text


async def test_a_client_leaving_mid_stream_is_an_outcome_not_a_status_code(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL], chunk_delay_s=0.05)
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {MODEL: ["PC1"]}})
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 200, "stream": True}
    response = await http.post(runtime.url + "/v1/chat/completions", json=body)
    await response.content.readline()
    response.close()
    await wait_until(lambda: pc1.events and pc1.events[-1]["outcome"] == "client_closed", timeout=3.0)

    async def counted() -> str | None:
        async with http.get(runtime.url + "/metrics") as answer:
            text = await answer.text()
        return text if sample(text, "llama_balancer_requests_total", outcome="client_closed") else None
    text = await wait_until(counted, timeout=3.0)
    assert sample(text, "llama_balancer_requests_total", model=MODEL, status="200", outcome="client_closed") == 1
    assert 'status="client_closed"' not in text
