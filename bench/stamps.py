"""Where a streamed request's time to first token goes inside the balancer: wall-time stamps
along the model endpoint's path, from the client's bytes read to the backend's first bytes
written back, at a few concurrencies.

It starts bench/backend.py on core 1 and the balancer on core 0, as bench/run does, but the
balancer runs under ``--serve`` here, which wraps a handful of the data path's methods
(the front's and the router's) with ``time.perf_counter_ns`` stamps before it starts. The
load is bench/streamgen.py (S2's streams, one concurrency at a time); each stage's p50 goes
to stdout, in microseconds since the request's bytes were read. Nothing is asserted: it is
a measurement aid (docs/performance.md, "where one stream's millisecond goes").

Usage: ``.venv/bin/python bench/stamps.py [--concurrency 1] [--duration 3] [--spin]``
(``--spin``: a SCHED_IDLE busy loop on core 0 keeps the proxy core from idling).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from procs import Procs, free_port, pin, wait_port  # noqa: E402

STAGES = ("serve", "_serve", "route", "_place_and_send", "_attempt", "send_upstream", "write")


def serve(argv: list[str], out: Path) -> int:
    """The balancer's ``serve`` with stamps; SIGUSR1 writes the stages' p50 to ``out`` and
    starts over."""
    from llama_balancer.cli import main
    from llama_balancer.http.front_connection import FrontConnection
    from llama_balancer.routing.router import Router

    now = time.perf_counter_ns
    open_: dict[int, list[tuple[str, int]]] = {}  # connection -> stamps of its request under way
    done: dict[str, list[float]] = {stage: [] for stage in STAGES}
    current: list[Any] = [None]  # the router's calls carry no connection: the latest request's

    def stamp(conn: Any, stage: str) -> None:
        marks = open_.get(id(conn))
        if marks is not None and stage in done:  # more bytes of the same request are not a stage
            marks.append((stage, now()))

    def wrap(cls: type, name: str, of_conn: bool) -> None:
        original: Callable[..., Any] = getattr(cls, name)
        if original.__code__.co_flags & 0x80:  # a coroutine function
            async def coro(self: Any, *args: Any, **kw: Any) -> Any:
                stamp(self if of_conn else current[0], name)
                return await original(self, *args, **kw)
            setattr(cls, name, coro)
            return

        def plain(self: Any, *args: Any, **kw: Any) -> Any:
            conn = self if of_conn else current[0]
            if name == "data_received" and id(conn) not in open_:
                open_[id(conn)] = [("read", now())]
                current[0] = conn
            else:
                stamp(conn, name)
            result = original(self, *args, **kw)
            if name == "write" and id(conn) in open_:  # the answer's first bytes: this request is done
                marks = open_.pop(id(conn))
                start = marks[0][1]
                for stage, at in marks[1:]:
                    done[stage].append((at - start) / 1e3)
            return result
        setattr(cls, name, plain)

    for name in ("data_received", "serve", "_serve", "_attempt", "send_upstream", "write"):
        wrap(FrontConnection, name, True)
    for name in ("route", "_place_and_send"):
        wrap(Router, name, False)

    def report(*_: object) -> None:
        out.write_text(json.dumps({stage: sorted(v)[len(v) // 2] if v else None for stage, v in done.items()}
                                  | {"requests": len(done["write"])}))
        for v in done.values():
            v.clear()

    signal.signal(signal.SIGUSR1, report)
    sys.argv = ["llama-balancer", *argv]
    return main()


def measure(concurrencies: list[int], duration: float, spin: bool) -> None:
    procs = Procs()
    work = Path(tempfile.mkdtemp(prefix="stamps-"))
    backend_port, port = free_port(), free_port()
    config = {"servers": {"bench": {"addr": "http://127.0.0.1", "health-port": backend_port,
                                    "model-port": backend_port}},
              "models": {"bench-model": ["bench"]}, "fallback_server": "bench", "balancer": {"access_log": "off"}}
    (work / "config.json").write_text(json.dumps(config))
    out = work / "stamps.json"
    try:
        backend = procs.start([*pin(1), sys.executable, str(BENCH / "backend.py"), "--port", str(backend_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(backend_port, backend)
        balancer = procs.start([*pin(0), sys.executable, __file__, "--serve", str(out), "serve", "--config",
                                str(work / "config.json"), "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "WARNING"])
        wait_port(port, balancer)
        time.sleep(2.0)  # the first polls
        spinner = procs.start([*pin(0), "chrt", "-i", "0", sys.executable, "-c", "while True: pass"]) if spin else None
        print("| streams | TTFT p50 ms (client) | " + " | ".join(STAGES) + " |")
        print("|---" * (len(STAGES) + 2) + "|")
        for concurrency in concurrencies:
            os.kill(balancer.pid, signal.SIGUSR1)  # start over
            time.sleep(0.2)
            load = subprocess.run([*pin(1), sys.executable, str(BENCH / "streamgen.py"), "--port", str(port),
                                   "--concurrency", str(concurrency), "--chunks", "32", "--delay-ms", "5",
                                   "--duration", str(duration)], capture_output=True, text=True, check=True)
            ttft = sorted(json.loads(load.stdout)["ttft_s"])
            os.kill(balancer.pid, signal.SIGUSR1)
            time.sleep(0.3)
            stages = json.loads(out.read_text())
            cells = " | ".join("-" if stages[s] is None else f"{stages[s]:.0f}" for s in STAGES)
            print(f"| {concurrency} | {ttft[len(ttft) // 2] * 1e3:.2f} | {cells} |")
        if spinner is not None:
            procs.stop(spinner)
    finally:
        procs.stop_all()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        sys.exit(serve(sys.argv[3:], Path(sys.argv[2])))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1", help="comma-separated stream counts (the router's stages are"
                        " exact at 1: its calls are stamped on the latest request)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of load per concurrency")
    parser.add_argument("--spin", action="store_true", help="a SCHED_IDLE busy loop on the proxy core")
    args = parser.parse_args()
    measure([int(c) for c in args.concurrency.split(",")], args.duration, args.spin)


if __name__ == "__main__":
    main()
