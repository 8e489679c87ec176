"""SPEC Part A, "Endpoints": every endpoint and the JSON keys users' scripts rely on."""
from __future__ import annotations

import pytest

from tests.conftest import server_entry, snapshot, wait_until

MODEL = "llama-3.1-8b"


@pytest.fixture
async def cluster(sims, balancer):
    pc1 = await sims(name="PC1", models=[MODEL], instances=3)
    pc2 = await sims(name="PC2", models=[MODEL, "qwen2.5-7b"])
    runtime = await balancer({
        "servers": {"PC1": server_entry(pc1, **{"request-max": 3}), "PC2": server_entry(pc2)},
        "models": {"llama.*": ["PC1", "PC2"], "qwen.*": ["PC2"]},
        "fallback_server": "PC2",
    })
    return pc1, pc2, runtime


async def test_llmhealth_reports_this_hosts_gpu_window(cluster, http):
    _, _, runtime = cluster
    async with http.get(runtime.url + "/llmhealth") as response:
        body = await response.json()
    assert body["status"] == "idle" and body["gpu_util_max5s"] == 0.0 and body["window_seconds"] == 5


async def test_snapshot_has_every_key_of_the_old_tool(cluster, http):
    pc1, _, runtime = cluster
    async with http.post(runtime.url + "/v1/chat/completions",
                         json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}) as response:
        assert response.status == 200
    # The health window holds a busy sample while the request ran; the shapes are the point.
    await wait_until(lambda: runtime.context.registry.state("PC1").status == "idle")
    snap = await snapshot(http, runtime)
    assert {"local", "backends", "servers", "models", "sticky_count", "sticky", "now"} <= set(snap)
    assert set(snap["local"]) >= {"status", "gpu_util_max5s", "window_seconds"}
    assert isinstance(snap["backends"], list) and [b["name"] for b in snap["backends"]] == ["PC1", "PC2"]
    backend = snap["backends"][0]
    assert {"base", "status", "last", "total_inflight", "model_inflight", "request_max"} <= set(backend)
    assert backend["base"] == pc1.url and backend["request_max"] == 3 and backend["status"] == "idle"
    assert backend["total_inflight"] == 0 and backend["model_inflight"] == {}
    assert snap["backends"][1]["request_max"] is None
    assert set(backend["last"]) >= {"status", "gpu_util_max5s", "updated_at", "url"}
    assert backend["last"]["updated_at"].endswith("Z") and backend["last"]["url"] == pc1.url + "/llmhealth"
    assert backend["last"]["gpu_util_max5s"] == 0.0  # the sim's agent answer, as the old tool kept it
    assert snap["servers"]["PC1"] == {"health_base": pc1.url, "model_base": pc1.url, "request_max": 3}
    assert "request_max" not in snap["servers"]["PC2"]
    assert snap["models"] == {"llama.*": ["PC1", "PC2"], "qwen.*": ["PC2"]}
    assert snap["sticky_count"] == 1
    entry = snap["sticky"][0]
    assert set(entry) >= {"key", "ip", "model", "backend", "updated_at"}
    assert (entry["key"], entry["ip"], entry["model"]) == (f"127.0.0.1|{MODEL}", "127.0.0.1", MODEL)
    assert entry["backend"] == "PC1" and entry["updated_at"].endswith("Z")
    assert snap["now"].endswith("Z")


async def test_monitor_serves_a_self_contained_dashboard(cluster, http):
    _, _, runtime = cluster
    async with http.get(runtime.url + "/llmhealth-monitor") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    assert "llmhealth-snapshot" in page and "access-log-stats" in page
    assert "http://" not in page and "https://" not in page  # no CDN, no external asset


async def test_access_log_stats_counts_the_last_hour_by_ip_model_and_user(cluster, http):
    _, _, runtime = cluster
    for user, model in [("alice", MODEL), ("bob", MODEL), ("alice", "qwen2.5-7b")]:
        body = {"model": model, "messages": [
            {"role": "system", "content": f"ユーザーの名前は「{user}」"}, {"role": "user", "content": "x"}]}
        async with http.post(runtime.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200
    async with http.get(runtime.url + "/access-log-stats") as response:
        stats = await response.json()
    assert stats["total_requests"] == 3
    assert (stats["unique_ips"], stats["unique_models"], stats["unique_usernames"]) == (1, 2, 2)
    assert stats["model_counts"] == {MODEL: 2, "qwen2.5-7b": 1}
    assert stats["username_counts"] == {"alice": 2, "bob": 1}
    assert stats["ip_counts"] == {"127.0.0.1": 3}
    # {minute as ISO-8601: count}, only minutes with requests (all three fell in one or two).
    assert sum(stats["time_series"].values()) == 3
    assert all(minute.endswith(":00Z") for minute in stats["time_series"])
    assert stats["retention_hours"] == 1
    assert stats["oldest_log"].endswith("Z") and stats["newest_log"] >= stats["oldest_log"]
    assert len(stats["per_minute"]) == 60 and sum(m["count"] for m in stats["per_minute"][-2:]) == 3


async def test_models_is_the_sorted_union_minus_instance_variants(cluster, http):
    _, _, runtime = cluster
    async with http.get(runtime.url + "/v1/models") as response:
        body = await response.json()
    assert body["object"] == "list"
    assert [entry["id"] for entry in body["data"]] == [MODEL, "qwen2.5-7b"]
    assert all(entry["object"] == "model" for entry in body["data"])


async def test_models_keeps_the_last_known_list_of_a_server_that_does_not_answer(cluster, http):
    _, pc2, runtime = cluster
    await pc2.set_fault("refuse")
    async with http.get(runtime.url + "/v1/models") as response:
        ids = [entry["id"] for entry in (await response.json())["data"]]
    assert ids == [MODEL, "qwen2.5-7b"]


async def test_favicon_is_204(cluster, http):
    _, _, runtime = cluster
    async with http.get(runtime.url + "/favicon.ico") as response:
        assert response.status == 204


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
async def test_anything_else_is_proxied_to_the_fallback_with_method_path_query_and_body(cluster, http, method):
    _, _, runtime = cluster
    async with http.request(method, runtime.url + "/sim/echo/deep/path?a=1&b=two", data=b"payload") as response:
        assert response.status == 200
        assert response.headers["X-Sim-Server"] == "PC2"
        echo = await response.json()
    assert (echo["method"], echo["path"], echo["query"]) == (method, "/sim/echo/deep/path", "a=1&b=two")
    assert echo["body_len"] == len(b"payload")


async def test_native_llama_endpoints_without_a_model_go_to_the_fallback(cluster, http):
    _, _, runtime = cluster
    async with http.post(runtime.url + "/completion", json={"prompt": "hi", "n_predict": 2}) as response:
        assert response.status == 200
        assert response.headers["X-Sim-Server"] == "PC2"
        assert "content" in await response.json()
