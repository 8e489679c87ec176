"""sglang-router (PyPI wheel ``sglang-router``, Rust) as the benches start it.

One place for its command line and environment, shared by the perf bench (``bench/harness.py``,
a target beside nginx) and the routing bench on real llama-servers
(``bench/routing/real_servers.py``, a policy): 127.0.0.1 only, its default ``cache_aware``
policy, one tokio worker thread (a one-core comparison), its Prometheus listener on 127.0.0.1
and a port of the caller's (its default, 0.0.0.0:29000, would clash between two routers).
Never ``--model-path``: it makes the router fetch a tokenizer from a hub.

Standard library only, so that both benches can import it (the perf bench as a plain module
from ``bench/``, the routing bench as ``bench.sglang_launch``).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata

SGLANG_ROUTER_ENV = {"TOKIO_WORKER_THREADS": "1"}
INSTALL_HINT = ".venv/bin/python -m pip install sglang-router (or pip install -e '.[bench]')"


def sglang_router_available() -> bool:
    """Whether this interpreter can run ``python -m sglang_router.launch_router``."""
    return importlib.util.find_spec("sglang_router") is not None


def sglang_router_version() -> str | None:
    try:
        return metadata.version("sglang-router")
    except metadata.PackageNotFoundError:
        return None


def sglang_router_argv(port: int, prometheus_port: int, worker_urls: list[str] | tuple[str, ...] = (),
                       python: str = sys.executable) -> list[str]:
    """The launcher's command line; without ``worker_urls``, register them with ``register_worker``."""
    argv = [python, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
            "--policy", "cache_aware", "--log-level", "warn", "--shutdown-grace-period-secs", "2",
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prometheus_port)]
    if worker_urls:
        argv += ["--worker-urls", *worker_urls]
    return argv


def _get_json(url: str, timeout: float) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def register_worker(port: int, worker_url: str, model_id: str, timeout_s: float = 20.0) -> None:
    """``POST /workers`` with the model id (so that the router's ``/v1/models`` lists it), then
    wait, bounded by ``timeout_s``, until the router holds the worker as healthy and lists the
    model. The router registers in the background: it answers 202 at once."""
    body = json.dumps({"url": worker_url, "model_id": model_id}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/workers", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        if resp.status not in (200, 201, 202):
            raise RuntimeError(f"sglang-router: POST /workers answered {resp.status}")
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            workers = _get_json(f"http://127.0.0.1:{port}/workers", 5)
            healthy = [w for w in workers.get("workers", []) if w.get("url") == worker_url and w.get("is_healthy")]
            if healthy:
                models = _get_json(f"http://127.0.0.1:{port}/v1/models", 5)
                if model_id in [m.get("id") for m in models.get("data", [])]:
                    return
            last = workers
        except (OSError, urllib.error.URLError, ValueError, AttributeError) as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"sglang-router: worker {worker_url} not registered and healthy after {timeout_s:g} s: {last}")
