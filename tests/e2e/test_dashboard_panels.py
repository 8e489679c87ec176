"""The dashboard's headline, errors panel and 15-minute charts in a real Chromium, and a
screenshot test: every chart is read back from a screenshot, pixel by pixel, and must show
its series in their colours over the plot (a blank, broken or "no data" chart fails).

Fed data goes to the real page through request routing; the last test runs real traffic
through the balancer to sims, with nothing faked.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from ..conftest import server_entry
from .conftest import require_chromium
from .pixels import decode_png, ink, variance

require_chromium(at_import=True)

ACCENT, GREEN, AMBER = "#3b5bdb", "#1f8a3b", "#b7791f"  # in flight / p50, tokens/s, p95 (monitor.html)
AXIS = 50  # the charts' left padding: y labels, not data
LONG_MODEL = "Qwen2.5-Coder-32B-Instruct-abliterated-GGUF:Q4_K_M-with-a-very-long-suffix"
POINTS = 450


def snapshot(sampler: str = "none") -> dict[str, Any]:
    return {
        "local": {"status": "idle", "gpu_util_max5s": 0.0, "window_seconds": 5, "sampler": sampler},
        "backends": [
            {"name": "GPU1", "base": "http://gpu1:8081", "status": "busy", "total_inflight": 2, "request_max": 4,
             "model_inflight": {LONG_MODEL: 2}, "models": [LONG_MODEL], "suspect": True, "circuit_open": False,
             "last": {"status": "busy", "gpu_util_max5s": None, "updated_at": "2024-05-01T10:00:00Z"},
             "slots_busy": 2, "slots_total": 4, "kind": "llama.cpp"},
            {"name": "GPU2", "base": "http://gpu2:8081", "status": "invalid", "total_inflight": 0, "request_max": None,
             "model_inflight": {}, "models": ["small"], "suspect": False, "circuit_open": True,
             "last": {"status": "invalid", "updated_at": "2024-05-01T10:00:00Z", "detail": "connect refused"}},
        ],
        "servers": {}, "models": {".*": ["GPU1", "GPU2"]}, "fallback_server": "GPU1",
        "sticky_count": 0, "sticky": [], "inflight_total": 2, "config": {"path": None, "loaded_at": None},
    }


def cache_sums(prompt: int, cached: int, requests: int) -> dict[str, Any]:
    return {"requests": requests, "prompt_tokens": prompt, "cached_tokens": cached,
            "hit_ratio": round(cached / prompt, 4) if prompt else None}


def stats() -> dict[str, Any]:
    minutes = [{"minute": f"2024-05-01T09:{m:02d}:00Z", "count": m % 3, "tokens": 10 * m,
                "ttft_ms_p50": None if m % 7 == 0 else 100.0 + m, "ttft_ms_p99": 400.0 + (m % 5) * 20,
                "tokens_per_s": None if m < 30 else 40.0 + m % 4} for m in range(60)]
    recent = [{"at": "2024-05-01T09:59:00Z", "ip": "10.0.0.1", "user": None, "model": LONG_MODEL, "server": "GPU1",
               "instance": LONG_MODEL, "reason": "spare-slot", "status": 200, "ttft_ms": 250.0, "duration_ms": 1500.0,
               "completion_tokens": 17, "queue_wait_ms": 0.0, "request_id": "req-1"}]
    short = {"total": cache_sums(10000, 9610, 40), "by_server": {"GPU1": cache_sums(10000, 9610, 40)},
             "by_model": {LONG_MODEL: cache_sums(10000, 9610, 40)}}
    hour = {"total": cache_sums(50000, 30000, 200),
            "by_server": {"GPU1": cache_sums(40000, 29000, 150), "GPU2": cache_sums(10000, 1000, 50)},
            "by_model": {LONG_MODEL: cache_sums(40000, 29000, 150), "small": cache_sums(10000, 1000, 50)}}
    errors = {"window_s": {"last_5m": 300, "last_1h": 3600},
              "last_5m": {"5xx": {"queue_timeout": 2, "upstream_connect": 1}, "retries": {"GPU2: connect": 3},
                          "circuit_openings": {"GPU2": 1}, "queue_timeouts": {LONG_MODEL: 2}},
              "last_1h": {"5xx": {"queue_timeout": 5, "upstream_connect": 1, "backend_500": 2},
                          "4xx": {"queue_full": 4}, "retries": {"GPU2: connect": 9}, "failovers": {"GPU2 → GPU1": 6},
                          "resumes": {"GPU2: resumed": 3, "GPU2: not_resumable": 1},
                          "circuit_openings": {"GPU2": 2}, "queue_timeouts": {LONG_MODEL: 5},
                          "outcomes": {"client_closed": 7}}}
    return {"window_seconds": 3600, "total_requests": 60, "unique_ips": 1, "unique_models": 2,
            "unique_usernames": 0, "ip_counts": {"10.0.0.1": 60}, "model_counts": {LONG_MODEL: 50, "small": 10},
            "username_counts": {}, "by_server": {"GPU1": 50, "GPU2": 10}, "per_minute": minutes, "recent": recent,
            "prompt_cache": {"window_s": {"last_5m": 300, "last_1h": 3600}, "last_5m": short, "last_1h": hour},
            "errors": errors}


def series(empty: bool = False) -> dict[str, Any]:
    def column(fn):
        return [None if empty else fn(i) for i in range(POINTS)]
    one = {"inflight": column(lambda i: 1 + (i // 20) % 3), "queued": column(lambda i: (i // 50) % 2),
           "slots_busy": column(lambda i: 1 + (i // 30) % 3), "slots_total": column(lambda i: 4),
           "ttft_ms_p50": column(lambda i: None if i % 9 == 0 else 120 + (i % 40) * 3),
           "ttft_ms_p95": column(lambda i: None if i % 9 == 0 else 400 + (i % 30) * 5),
           "tokens_per_s": column(lambda i: 20 + (i % 60) * 0.5)}
    return {"sample_s": 2.0, "points": POINTS, "start": "2024-05-01T09:45:00.000Z", "end": "2024-05-01T09:59:58.000Z",
            "now": "2024-05-01T09:59:59.000Z", "backends": {"GPU1": one, "GPU2": dict(one)}}


async def start_cluster(sims, balancer, **options: Any):
    pc1 = await sims(name="PC1", models=[LONG_MODEL], fast=False, chunk_delay_s=0.02, slots=1)
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {LONG_MODEL: ["PC1"]},
                              "fallback_server": "PC1", "balancer": options})
    return pc1, runtime


async def open_fed(dashboard, runtime, snap: dict, data: dict, points: dict, setup=None):
    async def fulfil(route, body):
        await route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    async def feed(page):
        if setup is not None:
            await setup(page)
        await page.route("**/llmhealth-snapshot", lambda route: fulfil(route, snap))
        await page.route("**/access-log-stats", lambda route: fulfil(route, data))
        await page.route("**/llmhealth-series", lambda route: fulfil(route, points))
    return await dashboard(runtime, feed)


async def chart_ink(page, selector: str, colour: str):
    png = await page.locator(selector).screenshot()
    return ink(decode_png(png), colour, left=AXIS)


HOUR_CHARTS = [("#chart-per-minute", ACCENT, 0.3), ("#chart-ttft", ACCENT, 0.5), ("#chart-ttft", AMBER, 0.3),
               ("#chart-tokens", GREEN, 0.35)]
SERIES_CHARTS = [("canvas.chart-load", ACCENT, 0.8), ("canvas.chart-ttft", ACCENT, 0.6),
                 ("canvas.chart-ttft", AMBER, 0.35), ("canvas.chart-tps", GREEN, 0.8)]  # p95 dashed: ~5/9 drawn


def every_chart() -> list[tuple[str, str]]:
    return [(selector, colour) for selector, colour, _ in HOUR_CHARTS] + [
        (f'.series-panel[data-backend="{backend}"] {selector}', colour)
        for backend in ("GPU1", "GPU2") for selector, colour, _ in SERIES_CHARTS]


async def test_the_screenshot_check_reads_colours_where_the_page_put_them(browser):
    """The PNG reader itself, on a page whose pixels are known."""
    page = await browser.new_page(viewport={"width": 300, "height": 120})
    await page.set_content('<body style="margin:0;background:#fff"><div id="box" style="width:300px;height:120px;'
                           'background:linear-gradient(90deg,#3b5bdb 0 100px,#fff 100px 200px,#1f8a3b 200px)">'
                           '</div></body>')
    image = decode_png(await page.locator("#box").screenshot())
    assert (image.width, image.height) == (300, 120)
    assert image.pixel(10, 10) == (0x3b, 0x5b, 0xdb) and image.pixel(150, 60) == (255, 255, 255)
    assert ink(image, ACCENT).columns == 100 and ink(image, GREEN, left=150).columns == 100
    assert ink(image, AMBER).pixels == 0 and variance(image) > 1000
    await page.close()


async def test_every_chart_shows_its_series_in_a_screenshot(sims, balancer, dashboard):
    _, runtime = await start_cluster(sims, balancer)
    page, log = await open_fed(dashboard, runtime, snapshot(), stats(), series())
    await page.wait_for_function("document.querySelectorAll('.series-panel canvas[data-points]').length === 6",
                                 timeout=5000)
    await page.wait_for_function("document.querySelector('#chart-tokens').dataset.points === '30'", timeout=5000)
    for selector, colour, share in HOUR_CHARTS:
        found = await chart_ink(page, selector, colour)
        assert found.columns >= share * found.plot_columns, (selector, colour, found)
    for backend in ("GPU1", "GPU2"):
        for selector, colour, share in SERIES_CHARTS:
            found = await chart_ink(page, f'.series-panel[data-backend="{backend}"] {selector}', colour)
            assert found.columns >= share * found.plot_columns, (backend, selector, colour, found)
            assert found.pixels >= 1.5 * found.columns  # lines 2 px wide (less where antialiased), not stray pixels
    assert not log.errors, log.errors


async def test_an_empty_or_broken_chart_fails_the_screenshot_check(sims, balancer, dashboard):
    """The controls: the same check on charts with nothing to draw, and on charts whose
    drawing throws half-way, finds no series ink, so such a chart would fail the test above."""
    _, runtime = await start_cluster(sims, balancer)
    empty = {**stats(), "per_minute": [{"minute": m["minute"], "count": 0} for m in stats()["per_minute"]]}
    page, _ = await open_fed(dashboard, runtime, snapshot(), empty, series(empty=True))
    await page.wait_for_function("document.querySelectorAll('.series-panel canvas[data-points]').length === 6",
                                 timeout=5000)
    for selector, colour in every_chart():
        assert (await chart_ink(page, selector, colour)).pixels == 0, selector

    async def break_lines(page):  # every series is drawn through lineTo/fillRect: make them throw
        await page.add_init_script("CanvasRenderingContext2D.prototype.lineTo = function () { throw new Error('x'); };"
                                   "CanvasRenderingContext2D.prototype.fillRect = function () { throw new Error('x'); };")
    page, log = await open_fed(dashboard, runtime, snapshot(), stats(), series(), setup=break_lines)
    await page.wait_for_function("document.querySelectorAll('.series-panel').length === 2", timeout=5000)
    await page.wait_for_timeout(500)
    for selector, colour in every_chart():
        assert (await chart_ink(page, selector, colour)).columns <= 3, selector  # at most a lone dot
    assert any("rendering" in e for e in log.errors)  # the page said so, and went on


async def test_the_headline_errors_and_tooltips_show_what_the_balancer_reports(sims, balancer, dashboard):
    _, runtime = await start_cluster(sims, balancer)
    page, log = await open_fed(dashboard, runtime, snapshot(), stats(), series())
    await page.wait_for_function("document.querySelector('#cache-ratio-5m').dataset.ratio !== ''", timeout=5000)

    # The headline, at the top of the page: above every other section.
    assert await page.text_content("#cache-ratio-5m") == "96.1 %"
    assert await page.text_content("#cache-ratio-1h") == "60.0 %"
    assert await page.text_content("#cache-tokens-5m") == "9610 of 10.0k prompt tokens cached · 40 requests"
    top = await page.evaluate("document.querySelector('#cache-section').getBoundingClientRect().top")
    for other in ("#error-counters", "#backends", "#series", "#routing-table", "#chart-per-minute"):
        assert top < await page.evaluate(f"document.querySelector('{other}').getBoundingClientRect().top"), other
    by_server = await page.eval_on_selector_all("#cache-by-server tbody tr", "rs => rs.map(r => [r.dataset.name, "
                                                "r.cells[1].textContent, r.cells[2].textContent, r.cells[3].textContent])")
    assert by_server == [["GPU1", "96.1 %", "72.5 %", "29.0k / 40.0k"], ["GPU2", "–", "10.0 %", "1000 / 10.0k"]]
    by_model = await page.eval_on_selector_all("#cache-by-model tbody tr", "rs => rs.map(r => r.cells[0].textContent)")
    assert by_model == [LONG_MODEL, "small"]

    # Errors: one counter per group, last 5 min large, the hour beside it; rows by kind.
    counters = await page.eval_on_selector_all(
        "#error-counters .counter", "cs => cs.map(c => [c.dataset.group, c.getAttribute('data-count-5m'), c.getAttribute('data-count-1h')])")
    assert counters == [["4xx", "0", "4"], ["5xx", "3", "8"], ["retries", "3", "9"], ["failovers", "0", "6"],
                        ["resumes", "0", "4"], ["circuit_openings", "1", "2"], ["queue_timeouts", "2", "5"], ["outcomes", "0", "7"]]
    assert await page.get_attribute('.counter[data-group="5xx"]', "data-recent") == "true"
    rows = await page.eval_on_selector_all("#errors-table tbody tr", "rs => rs.map(r => [r.dataset.group, "
                                           "r.dataset.kind, r.cells[2].textContent, r.cells[3].textContent])")
    assert ["5xx", "queue_timeout", "2", "5"] in rows and ["5xx", "backend_500", "0", "2"] in rows
    assert ["resumes", "GPU2: resumed", "0", "3"] in rows
    assert ["failovers", "GPU2 → GPU1", "0", "6"] in rows and ["outcomes", "client_closed", "0", "7"] in rows
    assert "queue_timeout_s" in await page.get_attribute('#errors-table tr[data-kind="queue_timeout"] td.err-kind', "title")
    assert "HTTP 500" in await page.get_attribute('#errors-table tr[data-kind="backend_500"] td.err-kind', "title")

    # No GPU on this host: no GPU header. A backend without an agent: no GPU figure.
    assert await page.locator("#gpu-header").is_hidden()
    gpu1 = page.locator('section.backend-card[data-backend="GPU1"]')
    assert await gpu1.locator("dd.gpu-util").is_hidden()

    # Jargon explained where it appears.
    reason = page.locator('#recent-table .reason[data-reason="spare-slot"]')
    assert "idle llama-server slot" in await reason.get_attribute("title")
    assert "health polls fail" in await page.get_attribute('section[data-backend="GPU2"] .status', "title")
    assert await page.locator('section[data-backend="GPU2"] .circuit').is_visible()
    assert "circuit_open_s" in await page.get_attribute('section[data-backend="GPU2"] .circuit', "title")
    assert "failed before its answer began" in await gpu1.locator(".suspect").get_attribute("title")
    assert "streamed" in await page.get_attribute("#recent-table thead th:nth-child(9)", "title")

    # Full model names: shown whole, wrapped rather than cut.
    for selector in ('#by-model .bar-row[data-key="%s"] .bar-label' % LONG_MODEL,
                     '#cache-by-model tbody tr[data-name="%s"] td' % LONG_MODEL):
        text, cut = await page.eval_on_selector(selector, "e => [e.textContent, e.scrollWidth > e.clientWidth]")
        assert text == LONG_MODEL and not cut, selector
    assert LONG_MODEL in await gpu1.locator(".served-models").text_content()
    assert not log.errors, log.errors


async def test_the_gpu_header_shows_where_the_host_has_a_gpu(sims, balancer, dashboard):
    _, runtime = await start_cluster(sims, balancer)
    page, _ = await open_fed(dashboard, runtime, snapshot("nvml"), stats(), series())
    await page.wait_for_function("document.querySelector('#local-sampler').textContent === 'nvml'", timeout=5000)
    assert await page.locator("#gpu-header").is_visible()


async def test_real_traffic_shows_in_the_headline_and_the_fifteen_minute_charts(sims, balancer, dashboard):
    """Nothing fed: the balancer's own numbers, from streamed chats that share a long prompt
    (so the sim's slot serves most of each prompt from its cache)."""
    pc1, runtime = await start_cluster(sims, balancer, dashboard_sample_s=0.5)
    page, log = await dashboard(runtime)
    await page.wait_for_function("document.querySelectorAll('.series-panel').length === 1", timeout=5000)
    assert await page.locator("#gpu-header").is_hidden()  # the tests' balancer samples no GPU
    system = "You are a careful assistant. " * 40

    async def chat(http, turn: int) -> None:
        body = {"model": LONG_MODEL, "stream": True, "max_tokens": 24,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": f"turn {turn}"}]}
        async with http.post(runtime.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200
            await response.read()

    async with aiohttp.ClientSession() as http:
        for turn in range(6):
            await chat(http, turn)
        await asyncio.sleep(1.2)  # two more samples
        async with http.get(runtime.url + "/access-log-stats") as response:
            want = (await response.json())["prompt_cache"]["last_5m"]["total"]["hit_ratio"]
    assert want and want > 0.5
    await page.wait_for_function("r => Number(document.querySelector('#cache-ratio-5m').dataset.ratio) === r",
                                 arg=want, timeout=5000)
    assert await page.text_content("#cache-ratio-5m") == f"{100 * want:.1f} %"
    panel = '.series-panel[data-backend="PC1"]'
    await page.wait_for_function(f"document.querySelector('{panel} canvas.chart-ttft').dataset.points > 0",
                                 timeout=5000)
    for selector, colour in (("canvas.chart-load", ACCENT), ("canvas.chart-ttft", ACCENT),
                             ("canvas.chart-tps", GREEN)):
        found = await chart_ink(page, f"{panel} {selector}", colour)
        assert found.pixels >= 4 and found.columns >= 1, (selector, found)
    assert await page.text_content("#series-step") == "0.5"
    assert not log.errors, log.errors
