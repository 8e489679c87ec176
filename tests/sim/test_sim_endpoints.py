"""Read-only endpoints of the sim: health, props, models, slots, metrics, llmhealth, events."""

from __future__ import annotations

import asyncio
import http.client

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


async def get_json(session, url: str):
    async with session.get(url) as resp:
        return resp.status, await resp.json()


async def test_models_lists_every_instance_of_every_model(make_sim, session):
    sim = await make_sim(fast=True, models=["llama", "qwen"], instances=3)
    status, body = await get_json(session, f"{sim.url}/v1/models")
    assert status == 200
    names = ["llama", "llama-2", "llama-3", "qwen", "qwen-2", "qwen-3"]
    assert [m["id"] for m in body["data"]] == names
    assert all(m["object"] == "model" and m["owned_by"] == "llamacpp" for m in body["data"])
    assert [m["aliases"] for m in body["data"]] == [[n] for n in names]
    assert [m["name"] for m in body["models"]] == names
    assert body["object"] == "list"


async def test_health_answers_ok_with_llama_headers(make_sim, session):
    sim = await make_sim(fast=True, name="pc1")
    for path in ("/health", "/v1/health"):
        async with session.get(f"{sim.url}{path}") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
            assert resp.headers["Server"] == "llama.cpp"
            assert resp.headers["X-Sim-Server"] == "pc1"


async def test_props_count_slots_over_all_instances(make_sim, session):
    sim = await make_sim(fast=True, slots=3, instances=2, ctx_per_slot=4096)
    status, props = await get_json(session, f"{sim.url}/props")
    assert status == 200
    assert props["total_slots"] == 6
    assert props["default_generation_settings"]["n_ctx"] == 4096
    assert props["build_info"] == "sim"
    assert props["model_path"]


async def test_unknown_path_answers_llama_style_404(make_sim, session):
    sim = await make_sim(fast=True)
    async with session.get(f"{sim.url}/no/such/thing") as resp:
        assert resp.status == 404
        assert resp.headers["Server"] == "llama.cpp"
        assert await resp.json() == {
            "error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}


async def test_slot_ids_are_unique_across_instances_and_name_their_model(make_sim, session):
    sim = await make_sim(fast=True, models=["m"], instances=2, slots=2)
    _, slots = await get_json(session, f"{sim.url}/slots")
    assert [(s["id"], s["model"]) for s in slots] == [(0, "m"), (1, "m"), (2, "m-2"), (3, "m-2")]
    assert all(s["is_processing"] is False and s["speculative"] is False for s in slots)


async def test_slots_fail_on_no_slot_answers_503_only_when_all_are_busy(make_sim, session):
    sim = await make_sim(slots=1, chunk_delay_s=0.05, prompt_tps=1e9)
    status, _ = await get_json(session, f"{sim.url}/slots?fail_on_no_slot=1")
    assert status == 200
    task = asyncio.create_task(session.post(f"{sim.url}/v1/chat/completions",
                                            json=CHAT | {"max_tokens": 6}))
    await asyncio.sleep(0.1)
    status, body = await get_json(session, f"{sim.url}/slots?fail_on_no_slot=1")
    assert status == 503
    assert body == {"error": {"code": 503, "message": "no slot available",
                              "type": "unavailable_error"}}
    (await task).close()


async def test_metrics_count_uncached_and_cached_prompt_tokens(make_sim, session):
    sim = await make_sim(fast=True, slots=1)
    for _ in range(2):
        async with session.post(f"{sim.url}/v1/chat/completions", json=CHAT) as resp:
            await resp.read()
    async with session.get(f"{sim.url}/metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    values = {line.split()[0]: float(line.split()[1])
              for line in text.splitlines() if line.startswith("llamacpp:")}
    # "<|user|>hello\n" is 7 tokens: 7 uncached, then 1 uncached + 6 cached
    assert values["llamacpp:prompt_tokens_total"] == 8
    assert values["llamacpp:prompt_tokens_cached_total"] == 6
    assert values["llamacpp:tokens_predicted_total"] == 4
    assert values["llamacpp:n_decode_total"] == 6
    assert values["llamacpp:requests_processing"] == 0
    assert values["llamacpp:requests_deferred"] == 0
    for name in ("prompt_seconds_total", "tokens_predicted_seconds_total",
                 "n_busy_slots_per_decode"):
        assert f"llamacpp:{name}" in values
    assert "# TYPE llamacpp:prompt_tokens_total counter" in text
    assert "# HELP llamacpp:requests_deferred" in text


async def test_llmhealth_is_busy_while_a_slot_works_and_idle_after(make_sim, session):
    sim = await make_sim(chunk_delay_s=0.05, prompt_tps=1e9)
    _, idle = await get_json(session, f"{sim.url}/llmhealth")
    assert idle == {"status": "idle", "gpu_util_max5s": 0.0, "window_seconds": 5}
    task = asyncio.create_task(session.post(f"{sim.url}/v1/chat/completions",
                                            json=CHAT | {"max_tokens": 4}))
    await asyncio.sleep(0.08)
    _, busy = await get_json(session, f"{sim.url}/llmhealth")
    assert (busy["status"], busy["gpu_util_max5s"]) == ("busy", 100.0)
    async with await task as resp:
        await resp.read()
    _, after = await get_json(session, f"{sim.url}/llmhealth")
    assert after["status"] == "idle"


async def test_llmhealth_forced_modes(make_sim, session):
    sim = await make_sim(fast=True, llmhealth="busy")
    _, body = await get_json(session, f"{sim.url}/llmhealth")
    assert body["status"] == "busy"
    sim.config.llmhealth = "garbage"
    async with session.get(f"{sim.url}/llmhealth") as resp:
        assert resp.status == 200 and await resp.text() == "weird"
    async with session.post(f"{sim.url}/sim/control", json={"llmhealth": "error"}) as resp:
        assert resp.status == 200
    async with session.get(f"{sim.url}/llmhealth") as resp:
        assert resp.status == 500
    sim.config.llmhealth = "idle"
    _, body = await get_json(session, f"{sim.url}/llmhealth")
    assert body["status"] == "idle"


async def test_events_record_each_request_and_can_be_cleared(make_sim, session):
    sim = await make_sim(fast=True)
    async with session.post(f"{sim.url}/v1/chat/completions",
                            json=CHAT | {"model": "sim-model", "stream": True}) as resp:
        await resp.read()
    _, events = await get_json(session, f"{sim.url}/sim/events")
    (event,) = events
    assert {k: event[k] for k in ("id", "path", "model", "instance", "slot", "stream",
                                  "prompt_n", "cache_n", "outcome")} == {
        "id": 1, "path": "/v1/chat/completions", "model": "sim-model",
        "instance": "sim-model", "slot": 0, "stream": True, "prompt_n": 7, "cache_n": 0,
        "outcome": "completed"}
    assert event["started"] <= event["first_byte"] <= event["ended"]
    async with session.delete(f"{sim.url}/sim/events") as resp:
        assert (await resp.json()) == {"cleared": 1}
    assert sim.events == []


async def test_event_log_keeps_only_the_newest_entries():
    from llama_balancer.sim.events import EventLog

    log = EventLog(maxlen=3)
    for i in range(5):
        log.open(f"/p{i}")
    assert [e["path"] for e in log.items] == ["/p2", "/p3", "/p4"]


async def test_events_keep_the_request_body_as_it_arrived(make_sim, session):
    sim = await make_sim(fast=True)
    body = CHAT | {"model": "x", "chat_template_kwargs": {"enable_thinking": True}}
    async with session.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
        await resp.read()
    assert sim.events[-1]["body"] == body


async def test_echo_answers_method_path_query_headers_and_a_streamed_body_digest(
        make_sim, session):
    import hashlib

    sim = await make_sim(fast=True)
    payload = bytes(range(256)) * 1024

    async def upload():
        for offset in range(0, len(payload), 65536):
            yield payload[offset:offset + 65536]

    async with session.put(f"{sim.url}/sim/echo/deep/path?a=1&b=two", data=upload(),
                           headers={"X-Custom": "kept"}) as resp:
        echo = await resp.json()
    assert (echo["method"], echo["path"], echo["query"]) == ("PUT", "/sim/echo/deep/path",
                                                             "a=1&b=two")
    assert echo["headers"]["X-Custom"] == "kept"
    assert echo["body_len"] == len(payload)
    assert echo["body_sha256"] == hashlib.sha256(payload).hexdigest()


async def test_sim_stream_sends_its_first_chunk_before_the_rest_exist(make_sim, session):
    sim = await make_sim(fast=True)
    async with session.get(f"{sim.url}/sim/stream?chunks=3&delay=0.1") as resp:
        first = await resp.content.readany()
        assert first == b"chunk 0\n"
        assert not resp.content.at_eof()
        rest = await resp.read()
    assert rest == b"chunk 1\nchunk 2\n"


async def test_error_answers_close_the_connection_and_others_name_the_keep_alive_limits(make_sim, session):
    """As llama-server (cpp-httplib): no Date, "Keep-Alive: timeout=5, max=100" on a kept
    connection, "Connection: close" on any 4xx or 5xx."""
    sim = await make_sim(fast=True)
    async with session.get(f"{sim.url}/health") as resp:
        assert resp.headers["Keep-Alive"] == "timeout=5, max=100"
        assert "Date" not in resp.headers and "Connection" not in resp.headers
    for method, path, data in (("GET", "/nope", None), ("POST", "/completion", b"{"),
                               ("POST", "/v1/chat/completions", b"{}")):
        async with session.request(method, f"{sim.url}{path}", data=data) as resp:
            assert resp.status >= 400 and resp.headers["Connection"] == "close", path
            assert "Keep-Alive" not in resp.headers


def _answers_until_close(port: int, limit: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for count in range(1, limit + 1):
            conn.request("GET", "/health")
            answer = conn.getresponse()
            answer.read()
            if answer.getheader("Connection") == "close":
                return count
        return limit
    finally:
        conn.close()


async def test_a_connection_is_closed_after_its_keepalive_max_requests(make_sim):
    sim = await make_sim(fast=True, keepalive_max_requests=3)
    assert await asyncio.to_thread(_answers_until_close, sim.port, 10) == 3
    sim.config.keepalive_max_requests = 0
    assert await asyncio.to_thread(_answers_until_close, sim.port, 10) == 10, "0: no limit"


async def test_metrics_are_in_llama_servers_order_and_format(make_sim, session):
    sim = await make_sim(fast=True)
    async with session.get(f"{sim.url}/metrics") as resp:
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4"
        assert resp.headers["Process-Start-Time-Unix"].isdigit()
        text = await resp.text()
    samples = [line.split() for line in text.splitlines() if line.startswith("llamacpp:")]
    assert samples[0] == ["llamacpp:prompt_tokens_total", "0"], "integral values print as C++ streams do"
    assert samples[-1][0] == "llamacpp:n_busy_slots_per_decode"
    assert "llamacpp:spec_decode_num_drafts_total" in [name for name, _ in samples]
