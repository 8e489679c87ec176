"""Thin I/O adapters: the upstream client, the relay, pollers, the GPU sampler."""
