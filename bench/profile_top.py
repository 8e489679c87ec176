"""Summarise a py-spy ``--format raw`` (collapsed stacks) file: top functions by own and by
inclusive samples. Usage: ``python bench/profile_top.py FILE [N]``."""
from __future__ import annotations

import re
import sys
from collections import Counter

_LINE = re.compile(r"\s*\(([^)]*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``; line numbers merged."""
    m = _LINE.search(frame)
    if not m:
        return frame.strip()
    path = m.group(1)
    short = "/".join(path.split("/")[-2:]) if "site-packages" in path or "/src/" in path else path
    return f"{frame[:m.start()].strip()} ({short})"


_CLIENT = ("client", "client_reqrep", "client_proto", "connector", "payload", "cookiejar", "tracing", "impl")
_SERVER = ("web_protocol", "web_app", "web_request", "web_response", "web_urldispatcher", "web_middlewares",
           "web_server", "web_runner")


def bucket(file: str) -> str:
    """Where a sample's leaf frame lives, coarsely."""
    stem = file.rsplit("/", 1)[-1].removesuffix(".py")
    if file.startswith("aiohttp/") and stem in _SERVER:
        return "aiohttp server (web_*)"
    if (file.startswith("aiohttp/") and stem in _CLIENT) or file.startswith("aiohappyeyeballs/"):
        return "aiohttp client"
    if file.startswith("aiohttp/"):
        return "aiohttp shared (streams, http_writer, helpers)"
    if file.startswith("llama_balancer/"):
        return "llama_balancer"
    if file.startswith("asyncio/runners") or file.startswith("uvloop"):
        return "event loop + syscalls (uvloop, in C)"
    if file.startswith(("asyncio/", "contextlib", "weakref", "_weakrefset")):
        return "asyncio/stdlib glue"
    return "other (" + file.split("/", 1)[0] + ")"


def summarise(path: str, n: int = 15) -> str:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    total = 0
    for line in open(path, encoding="utf-8", errors="replace"):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [_name(f) for f in stack.split(";") if f]
        # drop the process/thread pseudo-frames py-spy may add
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[frames[-1]] += c
        leaf = frames[-1]
        by_file[leaf[leaf.rfind("(") + 1:-1] if leaf.endswith(")") else leaf] += c
        for f in set(frames):
            incl[f] += c
    out = [f"{total} samples", "", "| own % | function |", "|---|---|"]
    out += [f"| {100 * c / total:.1f} | `{f}` |" for f, c in own.most_common(n)]
    buckets: Counter[str] = Counter()
    for f, c in by_file.items():
        buckets[bucket(f)] += c
    out += ["", "| own % | where |", "|---|---|"]
    out += [f"| {100 * c / total:.1f} | {b} |" for b, c in buckets.most_common()]
    out += ["", "| own % | file |", "|---|---|"]
    out += [f"| {100 * c / total:.1f} | `{f}` |" for f, c in by_file.most_common(n)]
    out += ["", "| inclusive % | function |", "|---|---|"]
    out += [f"| {100 * c / total:.1f} | `{f}` |" for f, c in incl.most_common(n)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarise(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15))
