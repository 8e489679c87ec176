"""CPU per request of the routing logic alone, no sockets: parse the body, resolve the
model, place it (default policy), take and give back the slot with sticky and affinity
bookkeeping, and record the finished exchange (metrics, stats, usage).

It isolates what the balancer adds per request beyond HTTP and I/O, so a change to
``core/``, ``state/`` or the bookkeeping can be judged in seconds. Figures go to stdout
(microseconds per request, per part); nothing is asserted.

Usage: ``.venv/bin/python bench/logic.py [--requests N]``
"""
from __future__ import annotations

import argparse
import asyncio
import time

import orjson

from llama_balancer.core.config import parse_config
from llama_balancer.core.identity import user_from_messages
from llama_balancer.io.gpu import NoGpuSampler
from llama_balancer.routing.resolve import model_of, parse_payload, resolve
from llama_balancer.runtime import Runtime
from llama_balancer.state.exchange import Exchange

CONFIG = {"servers": {"bench": {"addr": "http://127.0.0.1", "health-port": 1, "model-port": 1}},
          "models": {"bench-model": ["bench"]}, "fallback_server": "bench", "balancer": {"access_log": "off"}}
BODY = orjson.dumps({"model": "bench-model", "max_tokens": 16, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in one short sentence please."}]})
TAIL = b'data: {"usage":{"prompt_tokens":5,"completion_tokens":7}}\n\ndata: [DONE]\n\n'


async def measure(requests: int) -> dict[str, float]:
    ctx = Runtime(parse_config(orjson.dumps(CONFIG)), gpu_sampler=NoGpuSampler()).context
    parts = dict.fromkeys(("parse", "resolve", "obtain", "slot", "finish"), 0.0)
    clock = time.perf_counter
    for _ in range(requests):
        t0 = clock()
        ex = Exchange(request_id="r", endpoint="/v1/chat/completions", endpoint_label="/v1/chat/completions",
                      started=time.monotonic(), ip="127.0.0.1", identity="127.0.0.1")
        payload = parse_payload(BODY)
        ex.model = model_of(payload, True)
        ex.user = user_from_messages(payload.get("messages"))
        ex.identity = ex.user or ex.ip
        t1 = clock()
        resolved = resolve(ctx.config, ex.model, payload)
        t2 = clock()
        placed, lease = await ctx.router.placer.obtain(ex, resolved, set())
        t3 = clock()
        ex.server, ex.instance, ex.reason = placed.server, placed.instance, placed.reason
        async with ctx.registry.slot(placed.server, placed.instance or "(none)", None, lease):
            ctx.affinity.record(placed.server, placed.instance, None, resolved.fingerprint)
            ctx.sticky.bind(ex.identity, ex.ip, resolved.requested, placed.server, placed.instance)
            ctx.sticky.refresh(ex.identity, resolved.requested, placed.server, placed.instance)
        t4 = clock()
        ex.status, ex.first_byte = 200, time.monotonic()
        ex.tail.append(TAIL)
        ctx.recorder.finish(ex, None)
        t5 = clock()
        for name, spent in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            parts[name] += spent
    return {name: spent / requests * 1e6 for name, spent in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args()
    parts = asyncio.run(measure(args.requests))
    detail = ", ".join(f"{name} {us:.1f}" for name, us in parts.items())
    print(f"routing logic: {sum(parts.values()):.1f} us/request ({detail})")


if __name__ == "__main__":
    main()
