"""What the clients send: workloads, system-prompt variants and conversation scripts.

Everything here is a pure function of the seed, so every policy meets the same
conversations: the same system prompts, user messages, turn counts and think times. Only
how far each policy gets before the deadline differs.

Texts are built to an exact token count under the sim's tokenizer (``sim/tokens.py``: a
token is a run of word characters, one punctuation character, or a run of whitespace).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from llama_balancer.sim.tokens import render_message, tokenize

MODEL = "m"
BACKENDS = ("B1", "B2", "B3", "B4")


@dataclass(frozen=True)
class BackendSpec:
    """One simulated llama-server (``llama-balancer sim-backend`` flags of the same names)."""

    name: str
    slots: int = 2
    prompt_tps: float = 20000.0
    gen_tps: float = 200.0
    ctx: int = 16384
    fast: bool = False
    cache_ram_prompts: int = 0  # llama-server --cache-ram, in prompts (0: off, the setting)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "slots": self.slots, "prompt_tps": self.prompt_tps,
                "gen_tps": self.gen_tps, "ctx": self.ctx, "fast": self.fast,
                "cache_ram_prompts": self.cache_ram_prompts}


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    conversations: int  # conversations running at once (one client "seat" each)
    duration_s: float  # no turn starts after this; throughput counts turns ended before it
    backends: tuple[BackendSpec, ...]
    system_tokens: tuple[int, ...] = (1000, 1750, 2500, 3250, 4000)  # one per variant
    turns: tuple[int, int] = (4, 10)  # turns per conversation (inclusive range)
    user_tokens: tuple[int, int] = (20, 120)  # tokens of each new user message
    think_s: tuple[float, float] = (0.2, 1.0)  # pause after each answer
    max_tokens: int = 32
    conversations_per_seat: int | None = None  # None: a seat starts new ones until the deadline
    request_timeout_s: float = 120.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "conversations": self.conversations,
            "duration_s": self.duration_s, "backends": [b.to_json() for b in self.backends],
            "system_tokens": list(self.system_tokens), "turns": list(self.turns),
            "user_tokens": list(self.user_tokens), "think_s": list(self.think_s),
            "max_tokens": self.max_tokens, "conversations_per_seat": self.conversations_per_seat,
        }


def _backends(slow: str | None = None, factor: float = 3.0, **kw: Any) -> tuple[BackendSpec, ...]:
    out = []
    for name in BACKENDS:
        spec = BackendSpec(name, **kw)
        if name == slow:
            spec = replace(spec, prompt_tps=spec.prompt_tps / factor, gen_tps=spec.gen_tps / factor)
        out.append(spec)
    return tuple(out)


SLOW_BACKEND = "B1"  # W3's slow one: listed first, where order-based tie breaks send work

FULL: dict[str, Workload] = {
    # W1's conversations outlast the run (about one turn a second for 30 s): each could keep
    # a slot of its own, which is what the upper bound assumes. W2 and W3 churn: a seat
    # whose conversation ended starts a new one with a new name at once.
    "W1": Workload("W1", "as many conversations as slots (8)", 8, 30.0, _backends(), turns=(40, 60)),
    "W2": Workload("W2", "64 concurrent conversations over the 8 slots", 64, 40.0, _backends()),
    "W3": Workload("W3", f"W2 with one backend ({SLOW_BACKEND}) 3x slower", 64, 40.0,
                   _backends(slow=SLOW_BACKEND)),
    # Not the issue's: W2 with clients thinking 2-5 s, so round-robin keeps the slots about
    # 60 % busy and rarely queues. W2 itself saturates the slots, and TTFT there measures the
    # queue's length (docs/routing.md, point 5); here it measures where requests went.
    "W2m": Workload("W2m", "W2 at moderate load (think 2-5 s; a reference, not the issue's)", 64, 40.0,
                    _backends(), think_s=(2.0, 5.0)),
}

_SMOKE_KW: dict[str, Any] = dict(system_tokens=(60, 90, 120), turns=(2, 2), user_tokens=(5, 10),
                                 think_s=(0.0, 0.02), max_tokens=4, conversations_per_seat=1,
                                 request_timeout_s=20.0)
SMOKE: dict[str, Workload] = {
    "W1": Workload("W1", "smoke: 8 conversations", 8, 10.0, _backends(fast=True), **_SMOKE_KW),
    "W2": Workload("W2", "smoke: 16 conversations", 16, 10.0, _backends(fast=True), **_SMOKE_KW),
    "W3": Workload("W3", "smoke: 16 conversations, one slow backend", 16, 10.0,
                   _backends(slow=SLOW_BACKEND, prompt_tps=1e6, gen_tps=2000.0), **_SMOKE_KW),
    "W2m": Workload("W2m", "smoke: 16 conversations, moderate load", 16, 10.0, _backends(fast=True), **_SMOKE_KW),
}


# ----------------------------------------------------------------------------- texts

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _vocabulary(seed: str, size: int = 3000) -> list[str]:
    rng = random.Random(f"{seed}/vocabulary")
    return ["".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 9))) for _ in range(size)]


def make_text(rng: random.Random, vocabulary: list[str], n_tokens: int) -> str:
    """Prose of exactly ``n_tokens`` sim tokens (>= 1): words, spaces, commas and full stops.

    It starts with a word and never ends with whitespace, so rendering it in a chat
    template (``<|role|>text\\n``) cannot merge its last token with the newline.
    """
    if n_tokens < 1:
        raise ValueError("n_tokens must be at least 1")
    parts = [rng.choice(vocabulary)]
    count = 1
    while count < n_tokens:
        left = n_tokens - count
        if left == 1:
            parts.append(".")
            count += 1
        elif left >= 3 and rng.random() < 0.12:
            parts.append(rng.choice(",.;:") + " " + rng.choice(vocabulary))
            count += 3
        else:
            parts.append(" " + rng.choice(vocabulary))
            count += 2
    text = "".join(parts)
    assert len(tokenize(text)) == n_tokens, (n_tokens, len(tokenize(text)))
    return text


def identity_phrase(name: str) -> str:
    """The system-message phrase the balancer reads a user name from (README: Identity)."""
    return f"ユーザーの名前は「{name}」"


@dataclass(frozen=True)
class Conversation:
    name: str
    variant: int
    system: str
    users: tuple[str, ...]  # the user message of each turn
    think_s: tuple[float, ...]  # pause after each turn's answer

    @property
    def turns(self) -> int:
        return len(self.users)


@dataclass
class Scripts:
    """Variant texts (built once) and the conversations of every seat, made on demand."""

    workload: Workload
    seed: int
    identity: str = "user"  # "user": a distinct name per conversation; "ip": none
    _variants: list[str] = field(default_factory=list)
    _vocabulary: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.identity not in ("user", "ip"):
            raise ValueError("identity must be 'user' or 'ip'")
        self._vocabulary = _vocabulary(str(self.seed))
        self._variants = [make_text(random.Random(f"{self.seed}/variant/{v}"), self._vocabulary, n)
                          for v, n in enumerate(self.workload.system_tokens)]

    @property
    def variants(self) -> list[str]:
        return self._variants

    def start_delay(self, seat: int) -> float:
        """Seats start spread over one think time, not all in the same instant."""
        return random.Random(f"{self.seed}/start/{seat}").uniform(0.0, self.workload.think_s[1])

    def conversation(self, seat: int, k: int) -> Conversation:
        """The ``k``-th conversation of ``seat`` (independent of the workload's name, so W2
        and W3 send the same conversations)."""
        wl = self.workload
        rng = random.Random(f"{self.seed}/conversation/{seat}/{k}")
        variant = rng.randrange(len(self._variants))
        name = f"conv{seat}_{k}"
        system = self._variants[variant]
        if self.identity == "user":
            system = f"{system} {identity_phrase(name)}"
        turns = rng.randint(*wl.turns)
        users = tuple(make_text(rng, self._vocabulary, rng.randint(*wl.user_tokens)) for _ in range(turns))
        think = tuple(rng.uniform(*wl.think_s) for _ in range(turns))
        return Conversation(name, variant, system, users, think)


def message_tokens(message: dict[str, Any]) -> int:
    """Tokens one chat message adds to the sim's prompt (its template renders per message)."""
    return len(tokenize(render_message(message)))
