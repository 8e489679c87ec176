"""The ``llama-balancer`` command: serve | demo | sim-backend | check-config (a bare command serves)."""
from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..core.errors import ConfigError
from ..io.oplog import LOG_FORMATS, LOG_LEVELS, setup_logging

DESCRIPTION = ("One OpenAI-compatible base URL in front of several self-hosted LLM servers. "
               "With no command (or an option first), serve is meant.")
CONFIG_HELP = "the server-list.json to read (default: $SERVER_LIST_JSON, else ./server-list.json)"


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _log_level(value: str) -> str:
    level = value.lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(LOG_LEVELS)})")
    return level


def _logging_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", type=_log_level, default="info", metavar="{" + ",".join(LOG_LEVELS) + "}",
                        help="least severe operational log lines written to stderr; debug adds each routing "
                             "decision and its reason")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="the operational log on stderr: key=value text or one JSON object a line "
                             "(the access log is configured apart: balancer.access_log)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llama-balancer", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("-V", "--version", action="version", version=f"llama-balancer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    serve = sub.add_parser("serve", help="run the balancer (and this machine's /llmhealth agent)",
                           description="Run the balancer (and this machine's /llmhealth agent) from a "
                                       "server-list.json; SIGHUP reloads it, SIGTERM drains and stops.",
                           formatter_class=HelpFormatter)
    serve.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--port", type=int, default=18000, help="port to listen on")
    _logging_options(serve)
    demo = sub.add_parser("demo", help="run the balancer in front of 3 simulated llama-servers (no GPU)",
                          description="Run the balancer in front of 3 simulated llama-servers: no GPU, no network.",
                          formatter_class=HelpFormatter)
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument("--port", type=int, default=18000, help="port to listen on")
    _logging_options(demo)
    sub.add_parser("sim-backend", help="run one simulated llama-server (sim-backend --help lists its options)",
                   add_help=False)
    check = sub.add_parser("check-config", help="validate a server-list.json and explain the routing it describes",
                           description="Validate a server-list.json: every problem at once (exit status 1), "
                                       "warnings for patterns that can never match, then the routing explained. "
                                       "With --probe, each server is contacted once as the balancer polls it "
                                       "(exit status 2 when one cannot be read).",
                           formatter_class=HelpFormatter)
    check.add_argument("path", nargs="?", metavar="PATH", help=CONFIG_HELP)
    check.add_argument("--probe", action="store_true",
                       help="contact each server and print what was detected (kind, slots, models, agent) "
                            "or why it failed")
    return parser


def config_path(given: str | None) -> str:
    return given or os.environ.get("SERVER_LIST_JSON") or "server-list.json"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "-V", "--version")):
        argv.insert(0, "serve")
    if argv[0] == "sim-backend":  # its own parser; the product never imports sim otherwise
        from ..sim import main as sim_main
        return sim_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        from .check import check_config
        return check_config(config_path(args.path), probe=args.probe)
    setup_logging(args.log_level, args.log_format)
    if args.command == "demo":
        from .demo import run_demo
        return _listening(lambda: run_demo(args.host, args.port), args.host, args.port)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from ..runtime import Runtime, load_config, run, serve_until_signal

    path = config_path(args.config)
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
