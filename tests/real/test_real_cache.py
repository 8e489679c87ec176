"""Cache-aware routing on real llama-servers from the old tool's config, unchanged.

A ``server-list.json`` in the seed format (no ``kind``, health-port = model-port) in front of
two real llama-servers with two slots each; four multi-turn conversations with distinct
~400-token system prompts. The hit ratio is what llama-server reports per request
(``timings.cache_n`` against ``prompt_n``), compared with the oracle: the same conversations
sent straight to the servers, each pinned by hand to its own slot. Before detection, this
config routed every request ``last-resort`` to the first server (hit ratio ~0.05).
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest
from openai import AsyncOpenAI

from tests.real.conftest import RealServer, seed_entry

MODEL = "tiny"
CONVERSATIONS = 4
TURNS = 6
WORDS = ("the of and to in is that for it as with was on be by at this from have or an but not are which "
         "one all were when there can more if no out so what up time about into than only other new some "
         "could these two may first then do any like my now over such our man me even most made after also "
         "did many before must through back years where much your way well down should because each just").split()


def system_prompt(index: int, words: int = 300) -> str:
    """~400 tokens of the LLaMA vocabulary, different from the first word on."""
    rng = random.Random(index)
    return f"Agent {index}. " + " ".join(rng.choice(WORDS) for _ in range(words))


@dataclass
class Conversation:
    index: int
    messages: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.messages = [{"role": "system", "content": system_prompt(self.index)}]


@dataclass
class Tally:
    cached: int = 0
    prompt: int = 0

    def add(self, timings: dict) -> None:
        self.cached += timings["cache_n"]
        self.prompt += timings["prompt_n"]

    @property
    def ratio(self) -> float:
        return self.cached / (self.cached + self.prompt)


async def run_conversations(client: AsyncOpenAI, pin: dict[int, tuple[AsyncOpenAI, int]] | None = None) -> Tally:
    """Every conversation's turn n at once (4 requests on 4 slots), then turn n + 1.

    With ``pin``, conversation i goes to its own (client, slot) by hand: the oracle."""
    tally = Tally()
    conversations = [Conversation(i) for i in range(CONVERSATIONS)]

    async def turn(conv: Conversation, n: int) -> None:
        conv.messages.append({"role": "user", "content": f"Question {n} of conversation {conv.index}: why?"})
        target, extra = client, {}
        if pin is not None:
            target, slot = pin[conv.index]
            extra = {"id_slot": slot}
        answer = await target.chat.completions.create(
            model=MODEL, messages=conv.messages, max_tokens=12, temperature=0, extra_body=extra)
        timings = answer.model_extra["timings"]  # what llama-server itself reports
        tally.add(timings)
        conv.messages.append({"role": "assistant", "content": answer.choices[0].message.content or ""})

    for n in range(TURNS):
        await asyncio.gather(*(turn(conv, n) for conv in conversations))
    return tally


@pytest.mark.parametrize("cache_ram", ["0", None], ids=["cache-ram-0", "default-cache-ram"])
async def test_a_seed_config_on_plain_llama_servers_routes_cache_aware(llama_servers, balancer, cache_ram):
    extra = ("--cache-ram", cache_ram) if cache_ram is not None else ()
    # The oracle: fresh servers, each conversation pinned by hand to its own slot.
    o1, o2 = llama_servers("O1", *extra, metrics=False), llama_servers("O2", *extra, metrics=False)
    direct = {name: AsyncOpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0) for name, s in
              (("O1", o1), ("O2", o2))}
    pins = {0: (direct["O1"], 0), 1: (direct["O1"], 1), 2: (direct["O2"], 0), 3: (direct["O2"], 1)}
    oracle = await run_conversations(direct["O1"], pins)
    for server, client in zip((o1, o2), direct.values()):
        await client.close()
        server.stop()

    # The balancer: servers started as users start them (no --metrics), the old tool's file.
    s1, s2 = llama_servers("LS1", *extra, metrics=False), llama_servers("LS2", *extra, metrics=False)
    runtime = await balancer({"servers": {"PC1": seed_entry(s1), "PC2": seed_entry(s2)},
                              "models": {MODEL: ["PC1", "PC2"]}})
    registry = runtime.context.registry
    assert [registry.state(n).kind for n in ("PC1", "PC2")] == ["llama.cpp", "llama.cpp"]
    async with AsyncOpenAI(base_url=runtime.url + "/v1", api_key="x", max_retries=0) as client:
        routed = await run_conversations(client)
    print(f"hit ratio: routed {routed.ratio:.3f}, oracle {oracle.ratio:.3f}")

    stats = runtime.context.stats.summary()
    assert "last-resort" not in stats["by_reason"], stats["by_reason"]
    assert stats["by_server"] == {"PC1": CONVERSATIONS * TURNS // 2, "PC2": CONVERSATIONS * TURNS // 2}
    assert oracle.ratio > 0.8, f"the oracle itself should hit: {oracle}"
    assert routed.ratio >= 0.95 * oracle.ratio, f"routed {routed.ratio:.3f} vs oracle {oracle.ratio:.3f}"
    # Each server saw its two conversations in its own two slots (what /slots reports).
    for server in (s1, s2):
        slots = server.get("/slots")
        assert len(slots) == 2 and all(slot.get("n_prompt_tokens", 0) > 300 for slot in slots), slots
