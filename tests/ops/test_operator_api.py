"""What clients and orchestrators send, over real sockets: unknown model names (routed as
before, or 404 model_not_found), /livez and /readyz, /health still proxied, and CORS
(preflights answered by the balancer, its headers on every answer, native front and aiohttp)."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.conftest import server_entry, wait_until

MODEL = "m"
CHAT = "/v1/chat/completions"
ORIGIN = "https://chat.example.com"
KEY = {"Authorization": "Bearer k1"}


def chat(model: str = MODEL, stream: bool = False) -> dict:
    return {"model": model, "max_tokens": 2, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


async def post(http, runtime, data: dict, **headers: str) -> tuple[int, dict, bytes]:
    async with http.post(runtime.url + CHAT, json=data, headers=headers) as response:
        return response.status, response.headers, await response.read()


def raw_chat(model: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps(chat(model))
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%s\r\n%s" % (len(body), extra, body))


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    headers = [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:] if line)]
    length = int(dict(headers).get("content-length", "0"))
    return int(lines[0].split(" ")[1]), headers, await reader.readexactly(length)


async def on_aiohttp(runtime, request: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """``request`` served by aiohttp's handlers: a GET first hands the connection over."""
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        writer.write(b"GET /livez HTTP/1.1\r\nHost: lb\r\n\r\n")
        assert (await read_answer(reader))[0] == 200
        writer.write(request)
        return await read_answer(reader)
    finally:
        writer.close()


# -- unknown model names

async def test_reject_answers_404_model_not_found_naming_the_served_models_on_both_fronts(sims, balancer, http):
    sim = await sims(name="PC1", models=[MODEL, "other"])
    runtime = await balancer({"servers": {"PC1": server_entry(sim)}, "models": {".*": ["PC1"]},
                              "balancer": {"unknown_model": "reject"}})
    status, _, body = await post(http, runtime, chat("mtypo"))
    error = orjson.loads(body)["error"]
    assert status == 404 and error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
    assert "'mtypo'" in error["message"] and "served models: m, other" in error["message"]
    status, _, body = await on_aiohttp(runtime, raw_chat("mtypo"))
    assert status == 404 and orjson.loads(body)["error"]["code"] == "model_not_found"
    assert [e for e in sim.events if e.get("path") == CHAT] == []  # never reached the backend
    assert (await post(http, runtime, chat()))[0] == 200


async def test_fallback_routes_an_unknown_name_as_the_old_tool_did(sims, balancer, http):
    sim = await sims(name="PC1", models=[MODEL])  # a plain llama-server answers any name
    runtime = await balancer({"servers": {"PC1": server_entry(sim)}, "models": {".*": ["PC1"]}})
    status, headers, _ = await post(http, runtime, chat("mtypo"))
    assert status == 200 and headers["X-Sim-Server"] == "PC1"


async def test_names_some_list_holds_are_known_instances_and_rewrites_included(sims, balancer, http):
    one = await sims(name="PC1", models=[MODEL], instances=2)
    two = await sims(name="PC2", models=["b"])
    runtime = await balancer({
        "servers": {"PC1": server_entry(one), "PC2": server_entry(two)}, "models": {"m.*": ["PC1"]},
        "fallback_server": "PC1", "balancer": {"unknown_model": "reject"},
        "rewrites": [{"match": "(m)-high", "model": "\\1"}]})
    assert (await post(http, runtime, chat("m-2")))[0] == 200  # an instance PC1 lists
    assert (await post(http, runtime, chat("m-high")))[0] == 200  # rewritten to a listed name
    assert (await post(http, runtime, chat("b")))[0] == 200  # no pattern: PC2 lists it (sent to the fallback)
    assert (await post(http, runtime, chat("mx")))[0] == 404  # its route's server does not list it


async def test_without_any_known_list_nothing_is_called_unknown(sims, balancer, http):
    sim = await sims(name="PC1", models=[MODEL])
    await sim.set_fault("refuse")
    runtime = await balancer({"servers": {"PC1": server_entry(sim)}, "models": {".*": ["PC1"]},
                              "balancer": {"unknown_model": "reject"}}, settle=False)
    status, _, body = await post(http, runtime, chat("anything"))
    assert status == 502 and orjson.loads(body)["error"]["code"] != "model_not_found"


# -- liveness, readiness, /health

async def test_livez_and_readyz_are_open_and_readyz_follows_the_backends(sims, balancer, http):
    sim = await sims(name="PC1", models=[MODEL])
    await sim.set_fault("refuse")
    runtime = await balancer({"servers": {"PC1": server_entry(sim)}, "models": {MODEL: ["PC1"]},
                              "auth": {"api_keys": ["k1"]}}, settle=False)
    async with http.get(runtime.url + "/livez") as response:
        assert response.status == 200 and await response.json() == {"status": "ok"}
    async with http.get(runtime.url + "/readyz") as response:
        assert response.status == 503
        assert await response.json() == {"status": "not ready", "backends_usable": 0, "backends": 1}
    await sim.set_fault(None)

    async def ready() -> bool:
        async with http.get(runtime.url + "/readyz") as response:
            return response.status == 200 and (await response.json())["backends_usable"] == 1
    await wait_until(ready)
    async with http.head(runtime.url + "/readyz") as response:
        assert response.status == 200
    async with http.post(runtime.url + "/readyz") as response:  # other methods: the proxy's, with a key
        assert response.status == 401


async def test_health_stays_proxied_to_the_fallback_server(sims, balancer, http):
    sim = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(sim)}, "models": {MODEL: ["PC1"]}})
    async with http.get(runtime.url + "/health") as response:
        assert response.status == 200 and response.headers["X-Sim-Server"] == "PC1"


# -- CORS

@pytest.fixture
async def cors(sims, balancer):
    sim = await sims(name="PC1", models=[MODEL])  # sends its own (empty) Access-Control-Allow-Origin
    runtime = await balancer({"servers": {"PC1": server_entry(sim, kind="llama.cpp")}, "models": {MODEL: ["PC1"]},
                              "auth": {"api_keys": ["k1"]}, "balancer": {"cors_origins": [ORIGIN]}})
    return sim, runtime


async def test_a_preflight_is_answered_by_the_balancer_without_a_key(cors, http):
    _, runtime = cors
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
    async with http.options(runtime.url + CHAT, headers=headers) as response:
        assert response.status == 204 and "X-Sim-Server" not in response.headers
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert response.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
    async with http.options(runtime.url + CHAT, headers={**headers, "Origin": "https://evil.example"}) as response:
        assert response.status == 403 and "Access-Control-Allow-Origin" not in response.headers


async def test_answers_carry_the_balancers_cors_headers_instead_of_the_backends(cors, http):
    _, runtime = cors
    for stream in (False, True):  # the native front
        status, headers, _ = await post(http, runtime, chat(stream=stream), Origin=ORIGIN, **KEY)
        assert status == 200 and headers.getall("Access-Control-Allow-Origin") == [ORIGIN]
        assert "X-Request-Id" in headers["Access-Control-Expose-Headers"]
    status, headers, _ = await post(http, runtime, chat(), Origin=ORIGIN)  # no key: the error is readable too
    assert status == 401 and headers["Access-Control-Allow-Origin"] == ORIGIN
    async with http.get(runtime.url + "/v1/models", headers={"Origin": ORIGIN, **KEY}) as response:
        assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == ORIGIN
    status, headers, _ = await on_aiohttp(runtime, raw_chat(MODEL, f"Origin: {ORIGIN}\r\nAuthorization: Bearer k1\r\n"
                                                             .encode()))
    assert status == 200 and [v for n, v in headers if n == "access-control-allow-origin"] == [ORIGIN]
    status, headers, _ = await post(http, runtime, chat(), Origin="https://evil.example", **KEY)
    assert status == 200 and "Access-Control-Allow-Origin" not in headers and headers["Vary"] == "Origin"


async def test_without_cors_origins_a_preflight_is_proxied_as_before(sims, balancer, http):
    sim = await sims(name="PC1", models=[MODEL])
    runtime = await balancer({"servers": {"PC1": server_entry(sim)}, "models": {MODEL: ["PC1"]}})
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    async with http.options(runtime.url + CHAT, headers=headers) as response:
        assert response.headers["X-Sim-Server"] == "PC1"
    status, headers, _ = await post(http, runtime, chat(), Origin=ORIGIN)
    assert status == 200 and headers.getall("Access-Control-Allow-Origin") == [""]  # the backend's own
