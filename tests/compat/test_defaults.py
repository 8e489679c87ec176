"""SPEC Part A, "Defaults": port 18000 on all interfaces; upstream connect timeout 300 s and
no read timeout while a stream is alive, with an idle timeout option."""
from __future__ import annotations

from llama_balancer.cli import build_parser
from llama_balancer.core.config import BalancerOptions
from llama_balancer.io.upstream import UpstreamClient


def test_serve_listens_on_port_18000_on_all_interfaces_by_default():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("0.0.0.0", 18000)


def test_upstream_timeouts_are_300s_to_connect_and_none_for_reading():
    timeout = UpstreamClient(BalancerOptions()).request_timeout
    assert timeout.sock_connect == 300 and timeout.sock_read is None and timeout.total is None


def test_the_idle_timeout_option_bounds_silence_between_bytes():
    timeout = UpstreamClient(BalancerOptions(upstream_idle_timeout_s=30)).request_timeout
    assert timeout.sock_read == 30


def test_other_defaults_match_the_old_tool():
    options = BalancerOptions()
    assert options.health_poll_interval_s == 1.0 and options.health_window == 5
    assert (options.health_connect_timeout_s, options.health_read_timeout_s) == (5.0, 2.0)
    assert options.sticky_ttl_s == 180 and options.models_cache_ttl_s == 10
    assert options.max_body_bytes == 32 * 1024 * 1024


def test_a_port_already_in_use_is_a_one_line_error(tmp_path):
    import json
    import socket
    import subprocess
    import sys

    config = tmp_path / "server-list.json"
    config.write_text(json.dumps({"servers": {"PC1": {"addr": "http://127.0.0.1", "health-port": 1, "model-port": 1}}}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "llama_balancer", "serve", "--config", str(config),
                               "--host", "127.0.0.1", "--port", str(port)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
