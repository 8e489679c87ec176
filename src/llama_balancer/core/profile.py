"""What the balancer found out about a backend: its kind, agent, slots and models.

One line per server is logged at start and whenever this changes, so an operator sees at
once whether a plain llama-server was recognised (and so is routed cache-aware, with slot
pinning) or taken for something else.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendProfile:
    kind: str  # "llama.cpp" | "vllm" | "openai" | "agent" ("auto" while undetected)
    agent: bool  # an /llmhealth agent answers on the health port
    slots: int | None = None
    models: tuple[str, ...] | None = None
    pinned: bool = True  # slots are pinned (False: the server empties idle slots itself)

    def describe(self, name: str, model_base: str, health_base: str) -> str:
        """``PC1 http://10.0.0.2:8081 llama.cpp, 2 slots, models [a, b], agent on :18000``."""
        parts = [f"{name} {model_base} {self.kind}"]
        if self.slots is not None:
            parts.append(f"{self.slots} slot" + ("" if self.slots == 1 else "s")
                         + ("" if self.pinned else " (not pinned: the server empties idle slots)"))
        parts.append("models " + ("[" + ", ".join(self.models) + "]" if self.models is not None else "unknown"))
        if self.agent and self.kind != "agent":
            parts.append("agent on :" + health_base.rsplit(":", 1)[-1])
        return ", ".join(parts)


def agent_hint(name: str, detail: str | None, same_port: bool) -> str:
    """Why a configured ``/llmhealth`` agent is not answering, and what to do about it."""
    reason = detail or "no answer"
    if same_port:
        fix = (f'the health port is the model port: if {name} is a plain llama-server, vLLM or OpenAI '
               f'server, remove "kind" (its kind is then detected) or set "kind": "llama.cpp"')
    else:
        fix = (f"start `llama-balancer serve` on that machine as its agent, or remove \"kind\" from "
               f"servers.{name} to read the model server's own signals")
    return f"{reason}; {fix}"
