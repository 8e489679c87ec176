"""llama-balancer: one OpenAI-compatible base URL in front of several self-hosted LLM servers."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llama-balancer")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"
