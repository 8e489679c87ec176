"""A simulated llama.cpp llama-server for tests, the demo and benchmarks.

It serves the endpoints a balancer looks at (/health, /props, /v1/models, /slots,
/metrics, /llmhealth) and the completion endpoints (/v1/chat/completions with tool calls,
/v1/completions, /completion, /v1/embeddings, Anthropic's /v1/messages, OpenAI's
/v1/responses, Ollama's /api/chat, /api/generate, /api/embed) on a real socket, with slots that wait,
a per-slot prompt cache (cache_n / prompt_n as the real server reports them), simulated
prompt and generation time, and faults switchable at runtime (refuse, 500, 503, stall,
drop). /sim/control and /sim/events are test hooks. The product never imports this
package, and it imports only the standard library, aiohttp and orjson.

    sim = await start_sim(SimConfig(fast=True))
    ...  # talk to sim.url
    await sim.close()
"""

from .cli import main
from .config import SimConfig, parse_args
from .server import RunningSim, start_sim

__all__ = ["SimConfig", "RunningSim", "start_sim", "main", "parse_args"]
