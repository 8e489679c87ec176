"""The live dashboard in a real browser: Debian's Chromium driven by Playwright.

Each test starts simulated backends and the real balancer on loopback, opens
/llmhealth-monitor and watches the page update itself (it polls every second).
"""
from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..conftest import server_entry
from .conftest import require_chromium

require_chromium(at_import=True)  # skips this module in one line where Debian's chromium is missing

NAMES = ("PC1", "PC2", "PC3")
MODELS = {"PC1": "llama-a", "PC2": "llama-b", "PC3": "qwen-c"}
IDLE_CARDS = "n => document.querySelectorAll('section.backend-card[data-status=\"idle\"]').length === n"


async def start_cluster(sims, balancer, **options: Any):
    started = {name: await sims(name=name, models=[MODELS[name]]) for name in NAMES}
    config = {
        "servers": {name: server_entry(sim) for name, sim in started.items()},
        "models": {MODELS[name]: [name] for name in NAMES},
        "fallback_server": "PC1",
    }
    if options:
        config["balancer"] = options
    return started, await balancer(config, settle=not options)


async def card_status(page, name: str) -> str | None:
    return await page.get_attribute(f'section.backend-card[data-backend="{name}"]', "data-status")


async def test_page_loads_and_shows_every_backend_from_the_balancer_alone(sims, balancer, dashboard):
    _, runtime = await start_cluster(sims, balancer)
    page, log = await dashboard(runtime)
    await page.wait_for_function(IDLE_CARDS, arg=3, timeout=3000)

    cards = page.locator("section.backend-card")
    assert await cards.count() == 3
    for name in NAMES:
        card = page.locator(f'section.backend-card[data-backend="{name}"]')
        assert await card.get_attribute("data-status") == "idle"
        assert (await card.locator(".status").text_content()) == "idle"
        assert MODELS[name] in (await card.locator(".served-models").text_content())
        assert (await card.locator("dd.inflight").text_content()).startswith("0")
        assert await card.locator(".detail").is_hidden()
    assert await page.locator("#routing-table tbody tr").count() == 3
    assert (await page.text_content("#fallback-server")) == "PC1"
    assert await page.locator("#servers-table tbody tr").count() == 3
    assert await page.locator("#config-error").is_hidden()
    assert await page.locator("#conn-banner").is_hidden()
    for chart in ("chart-per-minute", "chart-ttft", "chart-tokens"):
        box = await page.locator(f"canvas#{chart}").bounding_box()
        assert box and box["width"] > 100 and box["height"] > 50, chart
    await page.wait_for_function("document.querySelector('#chart-per-minute').dataset.points > 0", timeout=3000)

    origin = urlsplit(runtime.url)[:2]
    foreign = [u for u in log.requests if urlsplit(u)[:2] != origin]
    assert not foreign, f"requests outside the balancer: {foreign}"
    assert any(u.endswith("/llmhealth-snapshot") for u in log.requests)
    assert any(u.endswith("/access-log-stats") for u in log.requests)
    assert not log.errors, log.errors


async def test_a_backend_going_down_shows_within_three_seconds(sims, balancer, dashboard):
    # Production timing: the balancer polls /llmhealth once a second, the page once a second.
    started, runtime = await start_cluster(sims, balancer, health_poll_interval_s=1.0)
    page, log = await dashboard(runtime)
    await page.wait_for_function(IDLE_CARDS, arg=3, timeout=5000)

    t0 = time.monotonic()
    await started["PC2"].set_fault("refuse")
    await page.wait_for_function(
        "document.querySelector('section.backend-card[data-backend=\"PC2\"]').dataset.status === 'invalid'",
        timeout=3000)
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0, f"PC2 shown invalid only after {elapsed:.2f}s"

    card = page.locator('section.backend-card[data-backend="PC2"]')
    assert (await card.locator(".status").text_content()) == "invalid"
    assert await card.locator(".detail").is_visible()
    assert await card_status(page, "PC1") == "idle"
    assert await card_status(page, "PC3") == "idle"
    assert not log.errors, log.errors

    # The balancer itself going away raises the connection banner.
    await runtime.stop()
    await page.wait_for_selector("#conn-banner", state="visible", timeout=3000)


async def test_requests_appear_without_a_reload(sims, balancer, dashboard):
    _, runtime = await start_cluster(sims, balancer)
    page, log = await dashboard(runtime)
    await page.wait_for_function(IDLE_CARDS, arg=3, timeout=3000)
    await page.wait_for_function("document.querySelector('#stats-totals').textContent.startsWith('0 requests')",
                                 timeout=3000)
    await page.evaluate("window.__sameDocument = 'marker'")

    sent = ["llama-a", "qwen-c", "llama-b", "llama-a"]
    async with aiohttp.ClientSession() as http:
        for model in sent:
            body = {"model": model, "messages": [{"role": "user", "content": f"hello {model}"}]}
            async with http.post(runtime.url + "/v1/chat/completions", json=body) as response:
                assert response.status == 200, await response.text()
                await response.read()
        async with http.get(runtime.url + "/access-log-stats") as response:
            stats = await response.json()

    await page.wait_for_function(
        "n => document.querySelectorAll('#recent-table tbody tr:not(.empty)').length === n", arg=len(sent),
        timeout=3000)
    assert (await page.text_content("#stats-totals")).startswith(f"{len(sent)} requests")
    assert await page.evaluate("window.__sameDocument") == "marker"
    assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1

    rows = await page.eval_on_selector_all(
        "#recent-table tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.textContent))")
    headers = await page.eval_on_selector_all("#recent-table thead th", "ths => ths.map(t => t.textContent)")
    assert headers[:7] == ["time", "ip", "user", "model", "server", "instance", "reason"]
    assert {"status", "TTFT", "duration"} <= set(headers)
    column = {name: headers.index(name) for name in headers}
    assert [row[column["model"]] for row in rows] == sent[::-1]  # newest first
    for row, entry in zip(rows, stats["recent"]):
        assert row[column["server"]] == entry["server"]
        # The new per-request columns show what the balancer reports, "–" where it reports nothing.
        expected = str(entry["status"]) if entry.get("status") is not None else "–"
        assert row[column["status"]] == expected
    by_model = await page.eval_on_selector_all("#by-model .bar-row", "rows => rows.map(r => r.dataset.key)")
    assert by_model[0] == "llama-a" and set(by_model) == set(sent)
    by_server = await page.eval_on_selector_all("#by-server .bar-row", "rows => rows.map(r => r.dataset.key)")
    assert set(by_server) == set(NAMES)
    assert not log.errors, log.errors


SNAPSHOT = {
    "local": {"status": "busy", "gpu_util_max5s": 73.5, "window_seconds": 5, "sampler": "nvml"},
    "backends": [
        {"name": "GPU1", "base": "http://gpu1:8081", "status": "busy", "total_inflight": 3, "request_max": 4,
         "model_inflight": {"m": 2, "m-2": 1}, "models": ["m", "m-2"],
         "last": {"status": "busy", "gpu_util_max5s": 88.0, "updated_at": "2024-05-01T10:00:00Z"},
         "slots_busy": 3, "slots_total": 4, "queue": 2, "suspect": True, "kind": "llama.cpp", "load": 5},
        {"name": "GPU2", "base": "http://gpu2:8081", "status": "invalid", "total_inflight": 0, "request_max": None,
         "model_inflight": {}, "models": None,
         "last": {"status": "invalid", "updated_at": "2024-05-01T10:00:00Z", "detail": "connect refused"}},
    ],
    "servers": {}, "models": {"m.*": ["GPU1", "GPU2"]}, "fallback_server": "GPU1",
    "sticky_count": 0, "sticky": [], "inflight_total": 3,
    "queue": {"length": 2, "max": 64, "waiting_by_model": {"m": 2}, "oldest_wait_s": 1.25},
    "affinity": [{"server": "GPU1", "instance": "m", "entries": 7}],
    "config": {"path": "/etc/lb.json", "loaded_at": "2024-05-01T09:00:00Z", "error": "models[0]: bad regex"},
}


def _stats() -> dict[str, Any]:
    minutes = [{"minute": f"2024-05-01T09:{m:02d}:00Z", "count": m % 3, "tokens": 10 * m,
                "ttft_ms_p50": None if m % 7 == 0 else 100.0 + m, "ttft_ms_p99": 400.0,
                "tokens_per_s": None if m < 30 else 42.5} for m in range(60)]
    recent = [{"at": "2024-05-01T09:59:00Z", "ip": "10.0.0.1", "user": None, "model": "m", "server": "GPU1",
               "instance": "m-2", "reason": "sticky", "status": 503, "ttft_ms": 250.0, "duration_ms": 1500.0,
               "completion_tokens": 17, "queue_wait_ms": 40.0, "request_id": "req-1"}]
    return {"window_seconds": 3600, "total_requests": 60, "unique_ips": 1, "unique_models": 1,
            "unique_usernames": 0, "ip_counts": {"10.0.0.1": 60}, "model_counts": {"m": 60},
            "username_counts": {}, "by_server": {"GPU1": 60},
            "per_minute": minutes, "recent": recent}


async def test_the_page_renders_slots_queue_affinity_and_the_hour_charts(sims, balancer, dashboard):
    """Every optional key the balancer may report, fed to the real page through request routing."""
    _, runtime = await start_cluster(sims, balancer)

    async def fulfil(route, body):
        await route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    async def feed(page):
        await page.route("**/llmhealth-snapshot", lambda route: fulfil(route, SNAPSHOT))
        await page.route("**/access-log-stats", lambda route: fulfil(route, _stats()))
    page, log = await dashboard(runtime, feed)
    await page.wait_for_function("document.querySelectorAll('section.backend-card').length === 2", timeout=3000)

    gpu1 = page.locator('section.backend-card[data-backend="GPU1"]')
    assert (await gpu1.locator("dd.slots").text_content()) == "3 / 4"
    assert (await gpu1.locator("dd.queue").text_content()) == "2"
    assert (await gpu1.locator("dd.inflight").text_content()) == "3 / 4"
    assert await gpu1.locator(".suspect").is_visible()
    assert (await gpu1.locator(".kind").text_content()) == "llama.cpp"
    assert await gpu1.locator("table.instances tbody tr").count() == 2
    gpu2 = page.locator('section.backend-card[data-backend="GPU2"]')
    assert await gpu2.get_attribute("data-status") == "invalid"
    assert await gpu2.locator("dd.slots").is_hidden() and await gpu2.locator("dd.queue").is_hidden()
    assert (await gpu2.locator(".detail").text_content()) == "connect refused"

    assert await page.locator("#queue").is_visible()
    assert (await page.text_content("#queue")).startswith("queue: 2 / 64")
    assert await page.locator("#config-error").is_visible()
    assert "bad regex" in await page.text_content("#config-error")
    assert await page.locator("#affinity-table tbody tr").count() == 1

    row = await page.eval_on_selector("#recent-table tbody tr", "r => Array.from(r.cells, c => c.textContent)")
    assert row[7:] == ["503", "250 ms", "1.50 s (queued 40 ms)", "17"]
    assert "17700 tokens generated" in await page.text_content("#stats-totals")  # sum of 10 * minute
    points = await page.evaluate(
        "['chart-per-minute', 'chart-ttft', 'chart-tokens'].map(id => document.getElementById(id).dataset.points)")
    assert points == ["60", str(60 + 51), "30"]  # p99 all 60 minutes + p50 with 9 gaps; tokens/s half the hour
    assert not log.errors, log.errors
