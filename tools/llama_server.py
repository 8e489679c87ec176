"""A real llama.cpp ``llama-server`` for the real-backend test tier and the routing bench.

Built once from the llama.cpp tree vendored in the ``llama-cpp-python`` sdist on PyPI (no
GitHub needed), CPU only, and cached outside the repository, keyed by the sdist's version and
this CPU's flags (``GGML_NATIVE`` tunes the binary for the CPU that builds it). The tiny
random-weight models are written with the ``gguf`` package; their tokenizer is the real
32,000-token LLaMA vocabulary from the vendored ``models/ggml-vocab-llama-spm.gguf``.

    python -m tools.llama_server build     # ~13 min once on 2 cores, then cached
    python -m tools.llama_server path      # prints the binary's path, exit 1 when not built
    python -m tools.llama_server model OUT.gguf [--embd 128 --layers 2]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python sdist whose vendor/llama.cpp is built
VOCAB = "ggml-vocab-llama-spm.gguf"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DGGML_NATIVE=ON",
]


def cache_root() -> Path:
    """``$LLAMA_BALANCER_CACHE``, else ``~/.cache/llama-balancer`` (outside the repo)."""
    env = os.environ.get("LLAMA_BALANCER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "llama-balancer"


def cpu_key() -> str:
    """A short hash of the CPU's feature flags (and machine), so a binary tuned for one CPU
    is never run on another that may lack its instructions."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        pass
    return hashlib.sha1(f"{platform.machine()} {flags}".encode()).hexdigest()[:12]


def build_dir() -> Path:
    return cache_root() / f"llama-server-{VERSION}-{cpu_key()}"


def binary() -> Path | None:
    """The cached binary when it was built for this version and CPU, else None."""
    path = build_dir() / "llama-server"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def vocab() -> Path | None:
    path = build_dir() / VOCAB
    return path if path.is_file() else None


def build(jobs: int | None = None) -> Path:
    """Download the sdist, build only ``llama-server`` and cache it with the vocab file."""
    found = binary()
    if found is not None and vocab() is not None:
        return found
    target = build_dir()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-build-", dir=cache_root()) as tmp:
        work = Path(tmp)
        _log(f"downloading llama-cpp-python=={VERSION} sdist")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={VERSION}", "-d", str(work)], check=True)
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
        _log(f"unpacking {sdist.name}")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
            tar.extractall(work, members=members, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        out = work / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _log("configuring (cmake)")
        subprocess.run(["cmake", "-S", str(source), "-B", str(out), *generator, *CMAKE_FLAGS],
                       check=True, stdout=subprocess.DEVNULL)
        jobs = jobs or os.cpu_count() or 2
        _log(f"building llama-server with {jobs} jobs (about 13 min on 2 cores)")
        subprocess.run(["cmake", "--build", str(out), "--target", "llama-server", "-j", str(jobs)],
                       check=True, stdout=subprocess.DEVNULL)
        built = next(p for p in out.rglob("llama-server") if p.is_file() and os.access(p, os.X_OK))
        shutil.copy2(source / "models" / VOCAB, target / VOCAB)
        shutil.copy2(built, target / "llama-server.tmp")
        os.replace(target / "llama-server.tmp", target / "llama-server")
    _log(f"cached at {target}")
    return target / "llama-server"


def _log(message: str) -> None:
    print(f"[llama-server] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.llama_server", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build and cache llama-server (no-op when cached)")
    b.add_argument("--jobs", type=int, default=None)
    sub.add_parser("path", help="print the cached binary's path; exit 1 when not built")
    m = sub.add_parser("model", help="write a tiny random-weight GGUF model")
    m.add_argument("out")
    m.add_argument("--embd", type=int, default=128)
    m.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build(args.jobs))
        return 0
    if args.command == "path":
        found = binary()
        if found is None:
            print(f"not built for this CPU: {build_dir()}", file=sys.stderr)
            return 1
        print(found)
        return 0
    from .tiny_gguf import write_tiny_model
    source = vocab()
    if source is None:
        print("build first: the vocab file comes with the build", file=sys.stderr)
        return 1
    write_tiny_model(Path(args.out), source, n_embd=args.embd, n_layers=args.layers)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
