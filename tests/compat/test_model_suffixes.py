"""SPEC Part A, "Model-name suffixes": rewrite rules from configuration, not code."""
from __future__ import annotations

import pytest

from llama_balancer.cli.demo import GPT_OSS_REWRITES

from tests.conftest import server_entry

BASE = "gpt-oss:20b"


@pytest.fixture
async def gpt_oss(sims, balancer):
    pc1 = await sims(name="PC1", models=[BASE])
    runtime = await balancer({
        "servers": {"PC1": server_entry(pc1)},
        "models": {"gpt-oss:20b.*": ["PC1"]},
        "rewrites": GPT_OSS_REWRITES,
    })
    return pc1, runtime


async def send(http, runtime, model: str, **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, **extra}
    async with http.post(runtime.url + "/v1/chat/completions", json=body) as response:
        assert response.status == 200
        return await response.json()


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
async def test_an_effort_suffix_becomes_reasoning_effort(gpt_oss, http, effort):
    pc1, runtime = gpt_oss
    answer = await send(http, runtime, f"{BASE}-{effort}", chat_template_kwargs={"enable_thinking": True})
    received = pc1.events[-1]["body"]
    assert received["model"] == BASE
    assert received["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": effort}
    assert answer["model"] == BASE


@pytest.mark.parametrize("suffix", ["apply", "edit"])
async def test_an_ide_agent_suffix_is_stripped_with_reasoning_format_auto(gpt_oss, http, suffix):
    pc1, runtime = gpt_oss
    await send(http, runtime, f"{BASE}-{suffix}")
    received = pc1.events[-1]["body"]
    assert received["model"] == BASE and received["reasoning_format"] == "auto"


async def test_a_plain_name_is_forwarded_byte_for_byte(gpt_oss, http):
    pc1, runtime = gpt_oss
    await send(http, runtime, BASE)
    received = dict(pc1.events[-1]["body"])
    assert received.pop("id_slot") in (0, 1)  # the slot the balancer pinned on this llama-server
    assert received == {"model": BASE, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}


async def test_sticky_and_stats_keep_the_model_name_as_asked(gpt_oss, http):
    _, runtime = gpt_oss
    await send(http, runtime, f"{BASE}-high")
    assert runtime.context.stats.summary()["model_counts"] == {f"{BASE}-high": 1}
    assert [entry["model"] for entry in runtime.context.sticky.entries()] == [f"{BASE}-high"]


async def test_without_rules_no_name_is_rewritten(sims, balancer, http):
    pc1 = await sims(name="PC1", models=[BASE])
    runtime = await balancer({"servers": {"PC1": server_entry(pc1)}, "models": {"gpt-oss.*": ["PC1"]}})
    await send(http, runtime, f"{BASE}-high")
    assert pc1.events[-1]["body"]["model"] == f"{BASE}-high"
    assert "chat_template_kwargs" not in pc1.events[-1]["body"]
