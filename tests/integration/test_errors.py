"""Bad input and broken backends: OpenAI-style JSON, the right status, nothing leaks."""
from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import assert_nothing_in_flight, server_entry

MODEL = "m"
CHAT = "/v1/chat/completions"


@pytest.fixture
async def one(sims, balancer):
    pc1 = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({
        "servers": {"PC1": server_entry(pc1)},
        "models": {MODEL: ["PC1"]},
        "balancer": {"max_body_bytes": 4096},
    })
    return pc1, runtime


async def error_of(response: aiohttp.ClientResponse) -> dict:
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    return body["error"]


@pytest.mark.parametrize("raw, code", [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'"text"', "invalid_json"),
    (b"", "invalid_json"),
    (b'{"messages": []}', "model_missing"),
    (b'{"model": 7, "messages": []}', "model_missing"),
    (b'{"model": null}', "model_missing"),
    (b'{"model": ["m"]}', "model_missing"),
])
async def test_bad_bodies_get_400_with_openai_error_json(one, http, raw, code):
    _, runtime = one
    async with http.post(runtime.url + CHAT, data=raw, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400
        error = await error_of(response)
    assert error["code"] == code and error["type"] == "invalid_request_error"
    await assert_nothing_in_flight(http, runtime)


async def test_a_body_over_the_size_limit_gets_413(one, http):
    _, runtime = one
    big = b'{"model": "m", "pad": "' + b"x" * 5000 + b'"}'
    async with http.post(runtime.url + CHAT, data=big) as response:
        assert response.status == 413
        assert (await error_of(response))["code"] == "payload_too_large"


async def test_a_chunked_body_over_the_size_limit_gets_413(one, http):
    _, runtime = one

    async def chunks():
        for _ in range(10):
            yield b"x" * 1000

    async with http.post(runtime.url + CHAT, data=chunks()) as response:
        assert response.status == 413
    await assert_nothing_in_flight(http, runtime)


async def test_an_unreachable_backend_gets_502_and_frees_the_slot(one, http):
    pc1, runtime = one
    await pc1.set_fault("refuse")
    async with http.post(runtime.url + CHAT, json={"model": MODEL, "messages": []}) as response:
        assert response.status == 502
        error = await error_of(response)
    assert error["type"] == "upstream_error" and "PC1" in error["message"]
    await assert_nothing_in_flight(http, runtime)


@pytest.mark.parametrize("fault", ["500", "503"])
async def test_a_backend_error_status_is_relayed_and_frees_the_slot(one, http, fault):
    pc1, runtime = one
    await pc1.set_fault(fault)
    async with http.post(runtime.url + CHAT, json={"model": MODEL, "messages": []}) as response:
        assert response.status == int(fault)
        await error_of(response)
    await assert_nothing_in_flight(http, runtime)


async def requests_total(http, runtime) -> list[str]:
    async with http.get(runtime.url + "/metrics") as response:
        return [line for line in (await response.text()).splitlines() if line.startswith("llama_balancer_requests_total{")]


async def test_a_backend_dropping_mid_stream_aborts_the_client_and_frees_the_slot(one, http):
    pc1, runtime = one
    await pc1.set_fault("drop")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 50}
    with pytest.raises(aiohttp.ClientError):
        async with http.post(runtime.url + CHAT, json=body) as response:
            await response.read()
    await assert_nothing_in_flight(http, runtime)
    lines = await requests_total(http, runtime)
    # the head (200) was out when the backend broke off: the status it was sent, and how it ended
    assert [line.endswith(" 1.0") for line in lines if 'outcome="upstream_error"' in line and 'status="200"' in line] == [True]


async def test_a_plain_answer_dropped_mid_body_is_a_clean_502_and_frees_the_slot(one, http):
    """A plain answer is read whole before its head goes out (Attempt.hold_bytes): broken off
    mid-body, nothing has reached the client yet, so it gets an error answer (here 502: the
    only server broke), not a cut connection."""
    pc1, runtime = one
    await pc1.set_fault("drop")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    async with http.post(runtime.url + CHAT, json=body) as response:
        assert response.status == 502
        error = await error_of(response)
    assert error["type"] == "upstream_error" and "PC1" in error["message"]
    await assert_nothing_in_flight(http, runtime)
    lines = await requests_total(http, runtime)
    assert [line.endswith(" 1.0") for line in lines if 'outcome="upstream_error"' in line and 'status="502"' in line] == [True]


async def test_an_idle_timeout_on_a_stalled_backend_gets_504(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL], fault="stall", stall_s=30)
    runtime = await balancer({
        "servers": {"PC1": server_entry(pc1)}, "models": {MODEL: ["PC1"]},
        "balancer": {"upstream_idle_timeout_s": 0.2},
    })
    async with http.post(runtime.url + CHAT, json={"model": MODEL, "messages": []}) as response:
        assert response.status == 504
        assert (await error_of(response))["code"] == "gateway_timeout"
    await assert_nothing_in_flight(http, runtime)


async def test_unknown_paths_still_reach_the_fallback_and_its_errors_pass_through(one, http):
    _, runtime = one
    async with http.get(runtime.url + "/no/such/path") as response:
        assert response.status == 404
        assert response.headers["Server"] == "llama.cpp"


async def test_the_balancer_survives_a_burst_of_bad_requests(one, http):
    _, runtime = one
    for raw in [b"\xff\xfe", b"{" * 1000, b'{"model": "m", "messages": "oops"}']:
        async with http.post(runtime.url + CHAT, data=raw) as response:
            assert response.status in (400, 200, 500)
    async with http.post(runtime.url + CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}) as response:
        assert response.status == 200
    await assert_nothing_in_flight(http, runtime)
