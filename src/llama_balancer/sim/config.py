"""Settings of one simulated llama-server, and the command line that fills them.

The config object is live: the control endpoint and the tests mutate it while the
server runs, and every request reads the current values.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

FAULTS: tuple[str, ...] = ("refuse", "500", "503", "stall", "drop")
# "absent": 404, as a plain llama-server answers (no agent on this port).
LLMHEALTH_MODES: tuple[str, ...] = ("busy", "idle", "garbage", "error", "absent")


@dataclass
class SimConfig:
    """What the simulated server serves and how fast; see the package docstring."""

    name: str = "sim"
    models: list[str] = field(default_factory=lambda: ["sim-model"])
    instances: int = 1
    slots: int = 2
    prompt_tps: float = 2000.0
    gen_tps: float = 100.0
    fast: bool = False
    default_max_tokens: int = 16
    ctx_per_slot: int = 8192
    fault: str | None = None
    stall_s: float = 3600.0
    drop_after_chunks: int = 2
    llmhealth: str | None = None
    chunk_delay_s: float | None = None
    # llama-server's --cache-ram: prompts evicted from a slot are kept in host memory and
    # restored into whichever slot a later request with that prefix gets. Counted in
    # prompts here (the real one counts MiB); 0 = off, like --cache-ram 0.
    cache_ram_prompts: int = 0
    # A real llama-server (cpp-httplib) closes an idle keep-alive connection after 5 s and
    # every connection after its 100th request, and says so in a "Keep-Alive: timeout=5,
    # max=100" header. The timeout is read once, at start; <= 0 leaves aiohttp's (75 s).
    # max 0 = no limit.
    keepalive_timeout_s: float = 5.0
    keepalive_max_requests: int = 100

    def __post_init__(self) -> None:
        check_fault(self.fault)
        check_llmhealth(self.llmhealth)
        if not self.models:
            raise ValueError("models: at least one model name is needed")
        if self.instances < 1 or self.slots < 1:
            raise ValueError("instances and slots must be at least 1")

    def instance_names(self) -> list[str]:
        """Names served: each model m as m, m-2, ..., m-K (K = instances)."""
        names: list[str] = []
        for model in self.models:
            names.append(model)
            names.extend(f"{model}-{k}" for k in range(2, self.instances + 1))
        return names

    def token_delay(self) -> float:
        """Seconds between generated tokens; chunk_delay_s wins over gen_tps."""
        if self.fast:
            return 0.0
        if self.chunk_delay_s is not None:
            return max(0.0, self.chunk_delay_s)
        return 1.0 / self.gen_tps if self.gen_tps > 0 else 0.0

    def prompt_delay(self, prompt_n: int) -> float:
        """Seconds spent evaluating prompt_n uncached prompt tokens."""
        if self.fast or self.prompt_tps <= 0:
            return 0.0
        return prompt_n / self.prompt_tps


def check_fault(fault: str | None) -> None:
    """Reject an unknown fault name early, where the caller can see it."""
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"fault: expected one of {FAULTS} or None, got {fault!r}")


def check_llmhealth(mode: str | None) -> None:
    """Reject an unknown forced /llmhealth mode."""
    if mode is not None and mode not in LLMHEALTH_MODES:
        raise ValueError(f"llmhealth: expected one of {LLMHEALTH_MODES} or None, got {mode!r}")


@dataclass(frozen=True)
class CliOptions:
    """The parsed command line: a config plus where to listen."""

    config: SimConfig
    host: str
    port: int


def build_parser() -> argparse.ArgumentParser:
    """The `sim-backend` argument parser (also used by the balancer's own cli)."""
    p = argparse.ArgumentParser(prog="sim-backend", description="Run one simulated llama-server (slots, prompt "
                                "cache, timings, faults) until SIGINT or SIGTERM.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8081, help="port to listen on (default: %(default)s)")
    p.add_argument("--name", default="sim", help="server name shown in X-Sim-Server and logs (default: %(default)s)")
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="model name served (repeatable; default sim-model)")
    p.add_argument("--instances", type=int, default=1,
                   help="copies of each model, served as NAME, NAME-2, ... (default: %(default)s)")
    p.add_argument("--slots", type=int, default=2, help="slots per instance (default: %(default)s)")
    p.add_argument("--prompt-tps", type=float, default=2000.0,
                   help="simulated prompt processing, tokens per second (default: %(default)s)")
    p.add_argument("--gen-tps", type=float, default=100.0,
                   help="simulated generation, tokens per second (default: %(default)s)")
    p.add_argument("--fast", action="store_true", help="no simulated delays at all")
    p.add_argument("--max-tokens", type=int, default=16, help="default tokens to generate (default: %(default)s)")
    p.add_argument("--ctx", type=int, default=8192, help="context size per slot (default: %(default)s)")
    p.add_argument("--fault", choices=FAULTS, default=None,
                   help="answer every completion with this fault (default: none)")
    p.add_argument("--stall-s", type=float, default=3600.0,
                   help="how long the stall fault holds a request (default: %(default)s)")
    p.add_argument("--drop-after", type=int, default=2, help="SSE events before a drop (default: %(default)s)")
    p.add_argument("--llmhealth", choices=LLMHEALTH_MODES, default=None,
                   help="what /llmhealth answers (default: idle or busy, from the slots)")
    p.add_argument("--chunk-delay", type=float, default=None,
                   help="fixed seconds between streamed tokens (overrides --gen-tps)")
    p.add_argument("--cache-ram-prompts", type=int, default=0,
                   help="evicted slot prompts kept in host memory and restored, like llama-server's "
                        "--cache-ram (default 0: off)")
    p.add_argument("--keepalive-timeout", type=float, default=5.0,
                   help="seconds an idle keep-alive connection stays open, as llama-server's; 0: aiohttp's 75 "
                        "(default: %(default)s)")
    p.add_argument("--keepalive-max", type=int, default=100,
                   help="requests per connection before the server closes it, as llama-server does; 0: no "
                        "limit (default: %(default)s)")
    return p


def parse_args(argv: list[str] | None = None) -> CliOptions:
    """Parse argv (None: sys.argv[1:]) into a SimConfig and a listen address."""
    ns = build_parser().parse_args(argv)
    config = SimConfig(
        name=ns.name,
        models=ns.models or ["sim-model"],
        instances=ns.instances,
        slots=ns.slots,
        prompt_tps=ns.prompt_tps,
        gen_tps=ns.gen_tps,
        fast=ns.fast,
        default_max_tokens=ns.max_tokens,
        ctx_per_slot=ns.ctx,
        fault=ns.fault,
        stall_s=ns.stall_s,
        drop_after_chunks=ns.drop_after,
        llmhealth=ns.llmhealth,
        chunk_delay_s=ns.chunk_delay,
        cache_ram_prompts=ns.cache_ram_prompts,
        keepalive_timeout_s=ns.keepalive_timeout,
        keepalive_max_requests=ns.keepalive_max,
    )
    return CliOptions(config=config, host=ns.host, port=ns.port)
