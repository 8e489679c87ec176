"""What the dashboard reads besides the snapshot: /llmhealth-series (per backend, 15 min at
``dashboard_sample_s``), and in /access-log-stats the prompt-cache hit ratio and the errors
panel's counts. Real requests through the balancer to sims; the sim's own account of each
request (its events: prompt_n, cache_n) is the reference."""
from __future__ import annotations

import asyncio

from tests.conftest import server_entry, wait_until

MODEL = "m"
CHAT = "/v1/chat/completions"
FAST_SAMPLES = {"dashboard_sample_s": 0.2}


def chat_body(user: str = "u", tokens: int = 4, stream: bool = False) -> dict:
    return {"model": MODEL, "max_tokens": tokens, "stream": stream,
            "messages": [{"role": "system", "content": f"ユーザーの名前は「{user}」 " + "You help. " * 40},
                         {"role": "user", "content": "hello"}]}


async def post(http, runtime, data, path: str = CHAT):
    async with http.post(runtime.url + path, json=data) as response:
        await response.read()
        return response


async def get_json(http, runtime, path: str, **headers):
    async with http.get(runtime.url + path, headers=headers) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_the_series_shows_in_flight_ttft_and_tokens_per_second_per_backend(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL], fast=False, chunk_delay_s=0.03)
    pc2 = await sims(name="PC2", models=["other"])
    runtime = await balancer({"servers": {"PC1": server_entry(pc1), "PC2": server_entry(pc2)},
                              "models": {MODEL: ["PC1"], "other": ["PC2"]}, "balancer": FAST_SAMPLES})
    streaming = asyncio.create_task(post(http, runtime, chat_body(tokens=40, stream=True)))

    async def in_flight_sampled():
        series = await get_json(http, runtime, "/llmhealth-series")
        return 1 in series["backends"].get("PC1", {}).get("inflight", []) and series  # none before the first tick
    series = await wait_until(in_flight_sampled, timeout=5)
    assert series["sample_s"] == 0.2 and series["points"] == 4500
    assert set(series["backends"]) == {"PC1", "PC2"}
    assert series["end"] > series["start"] and series["now"] >= series["end"]
    assert set(series["backends"]["PC1"]) == {"inflight", "queued", "slots_busy", "slots_total",
                                              "ttft_ms_p50", "ttft_ms_p95", "tokens_per_s"}
    assert (await streaming).status == 200
    await post(http, runtime, chat_body(tokens=8))  # not streamed: tokens, no TTFT

    async def finished():
        pc1_series = (await get_json(http, runtime, "/llmhealth-series"))["backends"]["PC1"]
        ttfts = [v for v in pc1_series["ttft_ms_p50"] if v is not None]
        return len(ttfts) == 1 and sum(v or 0 for v in pc1_series["tokens_per_s"]) > 0 and pc1_series
    pc1_series = await wait_until(finished, timeout=5)
    tokens = sum(v or 0 for v in pc1_series["tokens_per_s"]) * 0.2
    assert abs(tokens - 48) < 0.5, tokens  # 40 streamed + 8 plain, spread over their generation
    ttft = [v for v in pc1_series["ttft_ms_p95"] if v is not None]
    assert len(ttft) == 1 and 0 < ttft[0] < 5000
    assert set(v for v in (await get_json(http, runtime, "/llmhealth-series"))["backends"]["PC2"]["inflight"]
               if v is not None) == {0}


async def test_the_series_needs_an_admin_key_like_the_snapshot(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {MODEL: ["PC1"]},
                              "auth": {"admin_keys": ["adm"], "api_keys": ["k"]}})
    for key, status in ((None, 401), ("k", 401), ("adm", 200)):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with http.get(runtime.url + "/llmhealth-series", headers=headers) as response:
            assert response.status == status, key


async def test_the_hit_ratio_matches_what_the_backend_reported(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL], slots=1)
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {MODEL: ["PC1"]}})
    for stream in (False, True, False, True):
        assert (await post(http, runtime, chat_body(stream=stream))).status == 200
    stats = await get_json(http, runtime, "/access-log-stats")
    done = [e for e in pc1.events if e["path"] == CHAT]
    prompt = sum(e["prompt_n"] + e["cache_n"] for e in done)
    cached = sum(e["cache_n"] for e in done)
    assert cached > 0 and done[0]["cache_n"] == 0
    for window in ("last_5m", "last_1h"):
        cache = stats["prompt_cache"][window]
        want = {"requests": 4, "prompt_tokens": prompt, "cached_tokens": cached,
                "hit_ratio": round(cached / prompt, 4)}
        assert cache["total"] == want and cache["by_server"] == {"PC1": want} and cache["by_model"] == {MODEL: want}
    # The TTFT of the recent table and the per-minute chart: streamed answers only.
    recent = stats["recent"]
    assert [r["ttft_ms"] is not None for r in recent] == [True, False, True, False]


async def test_the_errors_panel_counts_retries_failovers_circuits_and_errors_by_kind(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL], fault="503")
    pc2 = await sims(name="PC2", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(pc1), "PC2": server_entry(pc2)},
                              "models": {MODEL: ["PC1", "PC2"]},
                              "balancer": {"health_poll_interval_s": 30, **FAST_SAMPLES,
                                           "routing": {"circuit_failures": 2, "circuit_open_s": 30}}},
                             settle=False)
    await wait_until(lambda: all(runtime.context.registry.state(n).served for n in ("PC1", "PC2")))
    for user in ("a", "b"):
        runtime.context.registry.state("PC1").suspect = False  # as if a poll cleared it
        assert (await post(http, runtime, chat_body(user))).status == 200
    async with http.post(runtime.url + CHAT, data=b"{not json") as response:
        assert response.status == 400
    await pc2.set_fault("500")
    assert (await post(http, runtime, chat_body("c"))).status == 500  # PC1's circuit is open: PC2 answers

    async def counted():  # retries and failovers arrive with the sampler's next tick
        errors = (await get_json(http, runtime, "/access-log-stats"))["errors"]
        return {"retries", "failovers", "circuit_openings", "4xx", "5xx"} <= errors["last_5m"].keys() and \
            sum(errors["last_5m"]["failovers"].values()) >= 2 and errors
    errors = await wait_until(counted, timeout=5)
    recent = errors["last_5m"]
    assert recent["retries"] == {"PC1: http_503": 2}
    assert recent["failovers"] == {"PC1 → PC2": 2}
    assert recent["circuit_openings"] == {"PC1": 1}
    assert recent["4xx"] == {"invalid_json": 1}
    assert recent["5xx"] == {"backend_500": 1}
    assert errors["last_1h"] == recent
    async with http.get(runtime.url + "/metrics") as response:
        text = await response.text()
    assert 'llama_balancer_circuit_openings_total{server="PC1"} 1.0' in text


async def test_a_queue_timeout_counts_as_a_5xx_and_as_a_queue_timeout(sims, balancer, http):
    sim = await sims(name="PC1", models=[MODEL], fast=False, chunk_delay_s=0.05)
    runtime = await balancer({"servers": {"PC1": server_entry(sim, **{"request-max": 1})},
                              "models": {MODEL: ["PC1"]}, "balancer": {"routing": {"queue_timeout_s": 0.2}}})
    holder = asyncio.create_task(post(http, runtime, chat_body("holder", tokens=20)))
    await wait_until(lambda: runtime.context.registry.total_inflight() == 1)
    assert (await post(http, runtime, chat_body("alice"))).status == 503
    await holder
    errors = (await get_json(http, runtime, "/access-log-stats"))["errors"]
    assert errors["last_5m"]["5xx"] == {"queue_timeout": 1}
    assert errors["last_5m"]["queue_timeouts"] == {MODEL: 1}
    async with http.get(runtime.url + "/metrics") as response:
        assert "llama_balancer_queue_timeouts_total 1.0" in await response.text()


async def test_requests_refused_before_routing_count_in_the_errors_panel_on_both_fronts(sims, balancer, http):
    """No key (the native front's POST and aiohttp's GET), a malformed request line: refused
    before any exchange exists, counted all the same."""
    sim = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(sim)}, "models": {MODEL: ["PC1"]},
                              "auth": {"api_keys": ["client"], "admin_keys": ["admin"]}})
    assert (await post(http, runtime, chat_body())).status == 401  # served by the native front
    async with http.get(runtime.url + "/metrics") as response:  # served by aiohttp
        assert response.status == 401
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    writer.write(b"POST /v1/chat/completions?a=1\tb=2 HTTP/1.1\r\nHost: lb\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 400")
    writer.close()
    errors = (await get_json(http, runtime, "/access-log-stats", Authorization="Bearer admin"))["errors"]
    assert errors["last_5m"]["4xx"] == {"invalid_api_key": 2, "malformed_request": 1}
