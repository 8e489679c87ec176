"""What the real-llama-server bench sends: variants (which servers), groups of agents sharing a
long tool prompt, and each conversation's script.

Everything here is a pure function of the seed (and of the tokenizer's words-per-token rate,
measured once on the real tokenizer), so every policy meets the same conversations: the same
preambles, agent prompts, user messages, turn counts and idle gaps. Replies come from the
servers (``temperature: 0``, so the same model gives the same reply to the same prompt).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

MODEL = "tiny"  # every llama-server runs with --alias tiny; the balancer routes "tiny" to all


@dataclass(frozen=True)
class ServerSpec:
    """One real llama-server: its random-weight model's size and its flags."""

    name: str
    embd: int = 128  # tools.llama_server model --embd
    layers: int = 2  # ... --layers
    slots: int = 2  # --parallel
    ctx: int = 8192  # -c, split over the slots

    @property
    def model_key(self) -> str:
        return f"e{self.embd}-l{self.layers}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "embd": self.embd, "layers": self.layers, "slots": self.slots, "ctx": self.ctx}


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    servers: tuple[ServerSpec, ...]
    groups: tuple[int, ...] = (1200, 2000, 2800)  # tokens of each group's shared tool prompt
    conversations: int = 12  # all running at once, one client task each; spread over the groups
    agent_tokens: tuple[int, int] = (40, 80)  # each agent's own instructions, after the preamble
    turns: tuple[int, int] = (5, 7)
    user_tokens: tuple[int, int] = (30, 90)
    max_tokens: int = 32
    think_s: tuple[float, float] = (1.0, 4.0)  # pause after an answer
    idle_p: float = 0.2  # ... or, with this probability, an idle gap
    idle_s: tuple[float, float] = (6.0, 12.0)
    start_s: float = 5.0  # conversations start spread over this
    request_timeout_s: float = 120.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "servers": [s.to_json() for s in self.servers],
            "groups": list(self.groups), "conversations": self.conversations,
            "agent_tokens": list(self.agent_tokens), "turns": list(self.turns),
            "user_tokens": list(self.user_tokens), "max_tokens": self.max_tokens,
            "think_s": list(self.think_s), "idle_p": self.idle_p, "idle_s": list(self.idle_s),
            "start_s": self.start_s,
        }


SLOW = ServerSpec("B1", embd=256, layers=4)  # ~3x slower per uncached turn than the tiny one (docs)
FULL: dict[str, Workload] = {
    "base": Workload("base", "2 servers x 2 slots, 12 agents in 3 groups sharing a tool prompt",
                     (ServerSpec("B1"), ServerSpec("B2"))),
    # The slow one is listed first, where order-based tie breaks send work.
    "skew": Workload("skew", "base with B1 several times slower (a bigger model)", (SLOW, ServerSpec("B2"))),
}
_SMOKE_KW: dict[str, Any] = dict(groups=(150, 250), conversations=6, agent_tokens=(10, 20), turns=(2, 2),
                                 user_tokens=(5, 10), max_tokens=4, think_s=(0.0, 0.1), idle_p=0.0,
                                 start_s=0.2, request_timeout_s=30.0)
SMOKE: dict[str, Workload] = {
    "base": replace(FULL["base"], title="smoke: 6 agents, 2 turns", **_SMOKE_KW),
    "skew": replace(FULL["skew"], title="smoke: 6 agents, 2 turns, B1 bigger",
                    servers=(SLOW, ServerSpec("B2")), **_SMOKE_KW),
}


# ----------------------------------------------------------------------------- texts

_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["an", "en", "in", "on", "er", "or"]


def vocabulary(seed: int, size: int = 2000) -> list[str]:
    rng = random.Random(f"{seed}/vocabulary")
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(size)]


def make_text(rng: random.Random, words: list[str], n_tokens: int, tokens_per_word: float) -> str:
    """About ``n_tokens`` tokens of prose (the real count is what the server reports)."""
    n_words = max(1, round(n_tokens / tokens_per_word))
    out = []
    for i in range(n_words):
        word = rng.choice(words)
        if i == 0 or out[-1].endswith("."):
            word = word.capitalize()
        out.append(word + ("." if rng.random() < 0.08 or i == n_words - 1 else ""))
    return " ".join(out)


@dataclass(frozen=True)
class Conversation:
    name: str
    group: int
    system: str
    users: tuple[str, ...]
    think_s: tuple[float, ...]  # pause after each turn's answer
    start_s: float

    @property
    def turns(self) -> int:
        return len(self.users)


@dataclass
class Scripts:
    workload: Workload
    seed: int
    tokens_per_word: float
    _words: list[str] = field(default_factory=list)
    preambles: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._words = vocabulary(self.seed)
        self.preambles = [
            "You are one of a team of agents. Tools you may call:\n"
            + make_text(random.Random(f"{self.seed}/preamble/{g}"), self._words, n, self.tokens_per_word)
            for g, n in enumerate(self.workload.groups)]

    def conversations(self) -> list[Conversation]:
        return [self.conversation(i) for i in range(self.workload.conversations)]

    def conversation(self, i: int) -> Conversation:
        wl = self.workload
        rng = random.Random(f"{self.seed}/conversation/{i}")
        group = i % len(wl.groups)
        agent = make_text(rng, self._words, rng.randint(*wl.agent_tokens), self.tokens_per_word)
        system = f"{self.preambles[group]}\n\nAgent {i}. Your task: {agent}"
        turns = rng.randint(*wl.turns)
        users = tuple(make_text(rng, self._words, rng.randint(*wl.user_tokens), self.tokens_per_word)
                      for _ in range(turns))
        think = tuple(rng.uniform(*wl.idle_s) if rng.random() < wl.idle_p else rng.uniform(*wl.think_s)
                      for _ in range(turns))
        start = random.Random(f"{self.seed}/start/{i}").uniform(0.0, wl.start_s)
        return Conversation(f"agent{i}", group, system, users, think, start)


def render_chatml(messages: list[dict[str, str]]) -> str:
    """The tiny models' chat template (tools/tiny_gguf.py, ChatML), without the generation prompt."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
