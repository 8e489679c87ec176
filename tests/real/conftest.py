"""The real-backend tier: real llama.cpp ``llama-server`` processes, built from source by
``python -m tools.llama_server build`` and cached outside the repository.

Without the binary these tests are skipped with one line saying so (``./dev test`` on a
fresh machine); ``.ci/run`` builds it and sets ``LLAMA_BALANCER_REQUIRE_REAL=1``, so in CI a
missing binary fails instead of skipping. Everything asserted here is what llama-server itself
reports (``timings.cache_n``, ``/slots``, its log), never what the balancer believes.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest

from tools import llama_server

BINARY = llama_server.binary()
REQUIRED = os.environ.get("LLAMA_BALANCER_REQUIRE_REAL") == "1"
SKIP_REASON = "real llama-server not built: `.venv/bin/python -m tools.llama_server build` (~13 min once)"


@pytest.fixture(scope="session")
def real_binary() -> Path:
    """The cached binary; a skip without it, a failure where CI requires the tier."""
    if BINARY is None:
        if REQUIRED:
            pytest.fail("LLAMA_BALANCER_REQUIRE_REAL=1 but llama-server is not built")
        pytest.skip(SKIP_REASON)
    return BINARY


def _model(name: str, n_embd: int, n_layers: int) -> Path:
    """A tiny random-weight model, written once into the build's cache folder."""
    from tools.tiny_gguf import write_tiny_model
    vocab = llama_server.vocab()
    assert vocab is not None, "the vocab file comes with the build"
    path = llama_server.build_dir() / name
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        write_tiny_model(tmp, vocab, n_embd=n_embd, n_layers=n_layers)
        tmp.replace(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(real_binary: Path) -> Path:
    return _model("tiny-128x2.gguf", 128, 2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RealServer:
    """One running llama-server: its URL, its log, and what it says about itself."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as answer:
            return orjson.loads(answer.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(self.url + path, data=orjson.dumps(body),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return orjson.loads(answer.read())

    def kill(self) -> None:
        """``kill -9``: the server vanishes mid-whatever, as a crashed machine would."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def seed_entry(server: RealServer) -> dict[str, Any]:
    """The old tool's ``server-list.json`` entry, no ``kind``: health-port = model-port."""
    return {"addr": "http://127.0.0.1", "health-port": server.port, "model-port": server.port}


@pytest.fixture
def llama_servers(real_binary: Path, tiny_model: Path, tmp_path: Path) -> Iterator[Callable[..., RealServer]]:
    """``start(name, *extra_args, parallel=2, ctx=8192, model=None, metrics=True)`` runs a
    llama-server on a free loopback port and waits until its /health says ok."""
    started: list[RealServer] = []

    def start(name: str = "LS", *extra: str, parallel: int = 2, ctx: int = 8192, model: Path | None = None,
              metrics: bool = True, verbose: bool = False) -> RealServer:
        port = free_port()
        args = [str(real_binary), "-m", str(model or tiny_model), "--alias", "tiny", "--host", "127.0.0.1",
                "--port", str(port), "--parallel", str(parallel), "-c", str(ctx), "-t", "1",
                *(["--metrics"] if metrics else []), *(["-v"] if verbose else []), *extra]
        log_path = tmp_path / f"{name}-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        server = RealServer(name, port, proc, log_path, args)
        started.append(server)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"llama-server exited with {proc.returncode}:\n{server.log()[-2000:]}")
            try:
                if server.get("/health").get("status") == "ok":
                    return server
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"llama-server not ready in 30 s:\n{server.log()[-2000:]}")
            time.sleep(0.05)

    yield start
    for server in started:
        server.stop()
