"""Streams are relayed as they arrive, and a client that leaves ends the upstream request."""
from __future__ import annotations

import asyncio

from tests.conftest import assert_nothing_in_flight, server_entry, wait_until

MODEL = "m"


async def start(sims, balancer, **sim_kwargs):
    pc1 = await sims(name="PC1", models=[MODEL], fast=False, **sim_kwargs)
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {MODEL: ["PC1"]}})
    return pc1, runtime


def stream_body(tokens: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": tokens, "stream": True}


async def test_the_first_event_reaches_the_client_while_the_backend_still_generates(sims, balancer, http):
    pc1, runtime = await start(sims, balancer, chunk_delay_s=0.1)
    async with http.post(runtime.url + "/v1/chat/completions", json=stream_body(20)) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first = await response.content.readline()
        assert first.startswith(b"data: {")
        # Generation of 20 tokens 100 ms apart is far from over: the sim has not ended it.
        assert pc1.events[-1]["ended"] is None
        rest = await response.read()
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert pc1.events[-1]["outcome"] == "completed"


async def test_a_client_leaving_mid_stream_closes_the_upstream_and_frees_the_count(sims, balancer, http):
    pc1, runtime = await start(sims, balancer, chunk_delay_s=0.05)
    response = await http.post(runtime.url + "/v1/chat/completions", json=stream_body(200))
    await response.content.readline()
    assert runtime.context.registry.total_inflight() == 1
    left_at = asyncio.get_running_loop().time()
    response.close()  # the client goes away mid-stream
    await wait_until(lambda: pc1.events and pc1.events[-1]["outcome"] == "client_closed", timeout=2.0)
    closed_after = pc1.events[-1]["ended"] - left_at
    assert closed_after < 0.5
    await assert_nothing_in_flight(http, runtime)


async def test_a_client_leaving_a_non_streamed_request_closes_the_upstream(sims, balancer, http):
    pc1, runtime = await start(sims, balancer, chunk_delay_s=0.05)
    body = {**stream_body(200), "stream": False}
    task = asyncio.create_task(http.post(runtime.url + "/v1/chat/completions", json=body))
    await wait_until(lambda: runtime.context.registry.total_inflight() == 1)
    task.cancel()
    await wait_until(lambda: pc1.events and pc1.events[-1]["outcome"] == "client_closed", timeout=2.0)
    await assert_nothing_in_flight(http, runtime)


async def test_proxied_bodies_stream_both_ways(sims, balancer, http):
    pc1, runtime = await start(sims, balancer)
    payload = bytes(range(256)) * 8192  # 2 MiB, sent chunked

    async def upload():
        for offset in range(0, len(payload), 65536):
            yield payload[offset:offset + 65536]

    async with http.put(runtime.url + "/sim/echo?x=1", data=upload()) as response:
        echo = await response.json()
    import hashlib
    assert echo["method"] == "PUT" and echo["query"] == "x=1"
    assert echo["body_len"] == len(payload)
    assert echo["body_sha256"] == hashlib.sha256(payload).hexdigest()

    async with http.get(runtime.url + "/sim/stream?chunks=5&delay=0.2") as response:
        first = await response.content.readany()
        assert first  # arrived although the backend needs another ~0.8 s for the rest
        assert not response.content.at_eof()
        rest = await response.read()
    assert (first + rest).count(b"chunk") == 5


async def test_hop_by_hop_headers_and_host_are_not_forwarded(sims, balancer, http):
    _, runtime = await start(sims, balancer)
    headers = {"Keep-Alive": "timeout=5", "X-Custom": "kept", "Proxy-Authorization": "secret",
               "TE": "trailers", "Upgrade": "websocket", "Connection": "Upgrade, X-Dropme", "X-Dropme": "1"}
    async with http.post(runtime.url + "/sim/echo", data=b"hello", headers=headers) as response:
        echo = await response.json()
    sent = {key.lower() for key in echo["headers"]}
    assert "x-custom" in sent
    for dropped in ("keep-alive", "proxy-authorization", "te", "upgrade", "x-dropme"):
        assert dropped not in sent
    assert echo["headers"].get("Host", echo["headers"].get("host")) == f"127.0.0.1:{runtime.context.config.servers['PC1'].model_port}"
    assert echo["body_len"] == 5
