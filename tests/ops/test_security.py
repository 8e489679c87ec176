"""API keys, admin keys, backend keys, request-target form and header limits."""
from __future__ import annotations

import asyncio
import logging

import openai
import pytest

from tests.conftest import server_entry

MODEL = "m"
ADMIN_PATHS = ["/llmhealth-snapshot", "/access-log-stats", "/llmhealth-monitor", "/metrics"]


@pytest.fixture
async def guarded(sims, balancer):
    pc1 = await sims(name="PC1", models=[MODEL])
    runtime = await balancer(
        {"servers": {"PC1": server_entry(pc1, api_key="backend-secret")}, "models": {MODEL: ["PC1"]},
         "auth": {"api_keys": ["client-key"], "admin_keys": ["admin-key"]}},
        environ={"LLAMA_BALANCER_API_KEYS": "env-key"})
    return pc1, runtime


async def test_the_api_needs_a_client_key_in_openai_style(guarded, http):
    _, runtime = guarded
    async with http.get(runtime.url + "/v1/models") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert (await response.json())["error"]["code"] == "invalid_api_key"
    for key in ("client-key", "env-key", "admin-key"):
        async with http.get(runtime.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}) as response:
            assert response.status == 200, key
    async with http.get(runtime.url + "/v1/models", headers={"x-api-key": "client-key"}) as response:
        assert response.status == 200


async def test_the_sdk_is_refused_without_the_key_and_served_with_it(guarded):
    _, runtime = guarded
    wrong = openai.AsyncOpenAI(base_url=runtime.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await wrong.models.list()
    right = openai.AsyncOpenAI(base_url=runtime.url + "/v1", api_key="client-key", max_retries=0)
    answer = await right.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert answer.choices[0].message.content
    await wrong.close()
    await right.close()


@pytest.mark.parametrize("path", ADMIN_PATHS)
async def test_admin_endpoints_need_the_admin_key_not_a_client_key(guarded, http, path):
    _, runtime = guarded
    for headers, status in [({}, 401), ({"Authorization": "Bearer client-key"}, 401),
                            ({"Authorization": "Bearer admin-key"}, 200)]:
        async with http.get(runtime.url + path, headers=headers) as response:
            assert response.status == status, headers


async def test_the_dashboard_page_takes_the_admin_key_from_the_query(guarded, http):
    _, runtime = guarded
    async with http.get(runtime.url + "/llmhealth-monitor?key=admin-key") as response:
        assert response.status == 200
    async with http.get(runtime.url + "/llmhealth-snapshot?key=admin-key") as response:
        assert response.status == 401  # only the page itself; its fetches send the header


async def test_the_agent_endpoint_stays_open_for_other_balancers(guarded, http):
    _, runtime = guarded
    async with http.get(runtime.url + "/llmhealth") as response:
        assert response.status == 200


async def test_the_backend_gets_its_own_key_never_the_clients(guarded, http):
    _, runtime = guarded
    headers = {"Authorization": "Bearer client-key", "x-api-key": "client-key"}
    async with http.post(runtime.url + "/sim/echo", data=b"x", headers=headers) as response:
        echo = await response.json()
        answer_headers = dict(response.headers)
    sent = {key.lower(): value for key, value in echo["headers"].items()}
    assert sent["authorization"] == "Bearer backend-secret"
    assert "x-api-key" not in sent
    assert "backend-secret" not in str(answer_headers)
    async with http.get(runtime.url + "/llmhealth-snapshot", headers={"Authorization": "Bearer admin-key"}) as response:
        assert "backend-secret" not in await response.text()


async def test_without_balancer_keys_the_clients_authorization_passes_through(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {MODEL: ["PC1"]}})
    async with http.post(runtime.url + "/sim/echo", data=b"x", headers={"Authorization": "Bearer for-backend"}) as response:
        echo = await response.json()
    assert {k.lower(): v for k, v in echo["headers"].items()}["authorization"] == "Bearer for-backend"


async def raw_request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return answer


@pytest.mark.parametrize("request_line", [
    b"GET http://example.com/v1/models HTTP/1.1",
    b"CONNECT example.com:443 HTTP/1.1",
])
async def test_absolute_uri_and_connect_targets_are_refused(sims, balancer, request_line):
    pc1 = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}})
    answer = await raw_request(runtime.port, request_line + b"\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"origin-form" in answer or b"Bad Request" in answer
    assert pc1.events == []


async def test_oversized_headers_are_refused_before_any_handler(sims, balancer, caplog):
    pc1 = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "balancer": {"max_header_bytes": 2048}})
    big = b"X-Big: " + b"a" * 4000
    with caplog.at_level(logging.WARNING):
        answer = await raw_request(runtime.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + big + b"\r\nConnection: close\r\n\r\n")
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1] == b"431", status_line
    assert pc1.events == []
    # The client's mistake is one warning line in the server log, not an ERROR traceback.
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "header field over 2048 bytes" in record.getMessage()
