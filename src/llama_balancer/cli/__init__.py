"""``llama-balancer serve | demo | sim-backend | check-config``; a bare command means serve."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..core.errors import ConfigError

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llama-balancer", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the balancer (and health agent) from a server-list.json")
    serve.add_argument("--config", help="config path (default: $SERVER_LIST_JSON or ./server-list.json)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=18000)
    serve.add_argument("--log-level", default="INFO")
    demo = sub.add_parser("demo", help="run the balancer in front of 3 simulated backends (no GPU)")
    demo.add_argument("--port", type=int, default=18000)
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--log-level", default="INFO")
    sub.add_parser("sim-backend", help="run one simulated llama-server (see sim-backend --help)", add_help=False)
    check = sub.add_parser("check-config", help="validate a server-list.json and explain it")
    check.add_argument("path")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "serve")
    if argv[0] == "sim-backend":  # its own parser; the product never imports sim otherwise
        from ..sim import main as sim_main
        return sim_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        from .check import check_config
        return check_config(args.path)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from .demo import run_demo
        return _listening(lambda: run_demo(args.host, args.port), args.host, args.port)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from ..runtime import Runtime, load_config, run, serve_until_signal

    path = args.config or os.environ.get("SERVER_LIST_JSON") or "server-list.json"
    try:
        config = load_config(path)
    except FileNotFoundError:
        print(f"llama-balancer: config file not found: {path} (set --config or $SERVER_LIST_JSON)", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"llama-balancer: {path} is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return _listening(lambda: run(serve_until_signal(Runtime(config, config_path=os.path.abspath(path)),
                                                     args.host, args.port)), args.host, args.port)


def _listening(start, host: str, port: int) -> int:
    """Run the server; a port already taken is a one-line error, not a traceback."""
    try:
        start()
    except OSError as exc:
        print(f"llama-balancer: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
