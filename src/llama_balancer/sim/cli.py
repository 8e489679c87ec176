"""`sim-backend`: run one simulated llama-server until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from .config import CliOptions, parse_args
from .server import start_sim


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def serve(options: CliOptions) -> None:
    """Start the sim, announce it on one line, and wait for a stop signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
    sim = await start_sim(options.config, options.host, options.port)
    cfg = options.config
    print(f"sim-backend {cfg.name} listening on {sim.url} "
          f"models={sim.state.instances} slots={cfg.slots}", flush=True)
    try:
        await stop.wait()
    finally:
        await sim.close()


def main(argv: list[str] | None = None) -> int:
    """Parse argv (None: sys.argv[1:]) and serve until interrupted; returns the exit code."""
    options = parse_args(argv)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            runner.run(serve(options))
        except KeyboardInterrupt:
            pass
    return 0
