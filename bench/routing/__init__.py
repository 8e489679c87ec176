"""Routing-quality benchmark: multi-turn conversations through llama-balancer to simulated
llama-servers, comparing routing policies on prompt-cache hits, TTFT and throughput.

Run ``.venv/bin/python -m bench.routing.run --help``; results are published in
``docs/routing.md``.
"""
