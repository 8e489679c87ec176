"""CPU per request of the whole native data path, without sockets: S1's request (the bytes
wrk sends) fed to a ``FrontConnection``, read by llhttp, routed, written to a pooled upstream
connection, answered with bench/backend.py's canned chat answer, relayed to the client and
recorded, one request after the other on one kept-alive connection.

Both transports are stand-ins that hand bytes over on the next loop iteration (as a socket's
readiness would), so the event loop, tasks and futures are all there; the syscalls and the
wake-ups of the peers are not. Its time per request still varies by some 10 % run to run on a
shared VM; ``--instructions`` counts instead what one request executes (valgrind's
cachegrind, two runs of different lengths, their difference), exact to about 0.5 %, which
judges a change of a microsecond. Figures go to stdout; nothing is asserted.

``--without routing`` (and/or ``record``) replaces the routing layer with a stub that hands
the request to the one server's attempt (``record``: the record's ``finish`` does nothing),
to see what each layer costs of the whole (docs/performance.md, "what each layer costs").

Usage: ``.venv/bin/python bench/path.py [--requests N] [--stream EVENTS] [--instructions]
[--without routing,record]``
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend import _DONE_CHUNK, _EVENTS, _REPLY_COMPLETION, _STREAM_HEAD  # noqa: E402

from llama_balancer.core.config import parse_config  # noqa: E402
from llama_balancer.http.front import Front  # noqa: E402
from llama_balancer.http.front_connection import FrontConnection  # noqa: E402
from llama_balancer.io.gpu import NoGpuSampler  # noqa: E402
from llama_balancer.io.wire import UpstreamConnection  # noqa: E402
from llama_balancer.io.wire_pool import WirePool  # noqa: E402
from llama_balancer.routing.recording import Recorder  # noqa: E402
from llama_balancer.routing.resolve import parse_payload  # noqa: E402
from llama_balancer.routing.router import Router  # noqa: E402
from llama_balancer.runtime import Runtime  # noqa: E402

CONFIG = {"servers": {"bench": {"addr": "http://127.0.0.1", "health-port": 9, "model-port": 9}},
          "models": {"bench-model": ["bench"]}, "fallback_server": "bench", "balancer": {"access_log": "off"}}
BODY = (b'{"model":"bench-model","messages":[{"role":"system","content":"You are a helpful assistant."},'
        b'{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16}')
STREAM_BODY = BODY[:-1] + b',"stream":true}'


def request(body: bytes) -> bytes:
    """The request wrk sends for S1 (bench/post.lua), byte for byte but the port."""
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:18000\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


class _Transport(asyncio.Transport):
    """Enough of a socket transport for the front and the pool; ``on_write`` sees every write."""

    def __init__(self, on_write: Any) -> None:
        super().__init__()
        self._on_write = on_write
        self._closing = False

    def write(self, data: Any) -> None:
        self._on_write(bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _AcceptAll:
    """The stub router's ``Answered``: every answer accepted, nothing recorded."""

    accepted, refused = True, None

    def accept(self, status: int) -> bool:
        return True


async def _stub_route(self: Router, call: Any, ex: Any, attempt: Any) -> Any:
    """``--without routing``: the body parsed (the attempt reads it), the one server tried."""
    call.payload = parse_payload(call.body)
    ex.server, ex.instance = "bench", "bench-model"
    return await attempt(self._config().servers["bench"], call, call.headers, call.body, ex, True, _AcceptAll())


def without(layers: list[str]) -> None:
    """Replace the named layers by stubs, for this process."""
    if "routing" in layers:
        Router.route = _stub_route  # type: ignore[method-assign]
    if "record" in layers:
        Recorder.finish = lambda self, ex, error: None  # type: ignore[method-assign]


async def measure(requests: int, events: int, warmup: int = 2000, split: bool = False) -> tuple[float, float]:
    """(CPU µs, wall µs) per request over ``requests`` after a warm-up."""
    loop = asyncio.get_running_loop()
    runtime = Runtime(parse_config(orjson.dumps(CONFIG)), gpu_sampler=NoGpuSampler())
    pool = WirePool(1.0, None, 0)
    front = Front(runtime.context, lambda: None, pool)  # type: ignore[arg-type,return-value]
    client = FrontConnection(front)
    upstream = UpstreamConnection(pool, ("127.0.0.1", 9, False))
    answer = _REPLY_COMPLETION if not events else _STREAM_HEAD + b"".join(_EVENTS[:events]) + _DONE_CHUNK
    ending = answer[-16:]
    payload = request(STREAM_BODY if events else BODY)
    state: dict[str, Any] = {"left": 0, "done": None}
    got: list[bytes] = []

    pieces = [answer] if not events or not split else \
        [_STREAM_HEAD + _EVENTS[0], *_EVENTS[1:events], _DONE_CHUNK]  # one read per event, as S2's

    def backend_got(data: bytes) -> None:
        if data.startswith(b"POST "):
            for piece in pieces:
                loop.call_soon(upstream.data_received, piece)

    def client_got(data: bytes) -> None:
        got.append(data)
        if not (data.endswith(ending) or data.endswith(b"0\r\n\r\n")):
            return
        answer, got[:] = b"".join(got), []
        if not answer.startswith(b"HTTP/1.1 200 "):
            state["done"].set_exception(SystemExit(f"bench/path.py: the balancer answered {answer[:300]!r}"))
            return
        state["left"] -= 1
        if state["left"] > 0:
            loop.call_soon(client.data_received, payload)
        else:
            state["done"].set_result(None)

    upstream.connection_made(_Transport(backend_got))
    pool._open = 1
    upstream.idle_since = time.monotonic()
    pool.put_back(upstream)
    client.connection_made(_Transport(client_got))

    async def run(count: int) -> None:
        state["left"], state["done"] = count, loop.create_future()
        client.data_received(payload)
        await asyncio.wait_for(state["done"], 60 + count / 100)

    await run(warmup)  # warm-up: caches, the children of every metric
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    await run(requests)
    return (time.process_time() - cpu) / requests * 1e6, (time.perf_counter() - wall) / requests * 1e6


def instructions(args: argparse.Namespace) -> int:
    """Instructions one request executes: this script under cachegrind for 200 and for
    ``200 + args.requests`` requests (the same warm-up), the difference over the extra ones."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("bench/path.py: --instructions needs valgrind (apt-get install valgrind)")
    counts = []
    runs = [subprocess.Popen([valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                              sys.executable, __file__, "--requests", str(n), "--warmup", "300",
                              "--stream", str(args.stream), *(["--split"] if args.split else []),
                              *(["--without", ",".join(args.without)] if args.without else [])],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for n in (200, 200 + args.requests)]
    for run in runs:
        _, err = run.communicate()
        found = re.search(r"I\s+refs:\s+([0-9,]+)", err)
        if run.returncode != 0 or found is None:
            raise SystemExit(f"bench/path.py: the run under valgrind failed:\n{err[-2000:]}")
        counts.append(int(found.group(1).replace(",", "")))
    return (counts[1] - counts[0]) // args.requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=None, help="measured requests (20000; 1000 with --instructions)")
    ap.add_argument("--stream", type=int, default=0, metavar="EVENTS",
                    help="a streamed answer of this many events (in one read) instead of S1's plain one")
    ap.add_argument("--warmup", type=int, default=2000, help="requests before the measured ones")
    ap.add_argument("--split", action="store_true", help="with --stream: each event in a read of its own (as in S2)")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per request under valgrind instead (--requests 1000 by default)")
    ap.add_argument("--without", type=lambda v: [x for x in v.split(",") if x], default=[],
                    help="stub out these layers: routing, record (comma-separated)")
    args = ap.parse_args()
    unknown = set(args.without) - {"routing", "record"}
    if unknown:
        ap.error(f"--without: unknown layer(s) {', '.join(sorted(unknown))} (routing, record)")
    without(args.without)
    kind = (f"streamed, {args.stream} events" + (", a read each" if args.split else " in one read")) if args.stream \
        else "plain (S1)"
    if args.without:
        kind += f", without {' and '.join(args.without)}"
    if args.instructions:
        args.requests = args.requests or 1000
        print(f"data path, no sockets, {kind}: {instructions(args):,} instructions/request")
        return
    args.requests = args.requests or 20000
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)  # as runtime.run sets it
    try:
        import uvloop
    except ImportError:
        cpu, wall = asyncio.run(measure(args.requests, args.stream, args.warmup, args.split))
    else:
        cpu, wall = uvloop.run(measure(args.requests, args.stream, args.warmup, args.split))
    print(f"data path, no sockets, {kind}: {cpu:.1f} us CPU/request ({wall:.1f} us wall)")


if __name__ == "__main__":
    main()
