"""The per-exchange metrics are kept as plain numbers and rendered at scrape time; their
exposition must be what prometheus-client's own Counter and Histogram children gave for the
same exchanges (the way they were kept before), sample for sample, but the creation times."""
from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from llama_balancer.core.usage import Usage
from llama_balancer.io.observability import LATENCY_BUCKETS, Metrics
from llama_balancer.state.exchange import Exchange


class _NoServers:
    def names(self) -> list[str]:
        return []


def reference(exchanges: list[Exchange]) -> bytes:
    """The exposition prometheus-client's children give (labels() on first use of each)."""
    prom = CollectorRegistry(auto_describe=True)
    requests = Counter("llama_balancer_requests", "Requests by status sent and outcome.",
                       ["model", "server", "instance", "endpoint", "status", "outcome"], registry=prom)
    duration = Histogram("llama_balancer_request_duration_seconds", "Request time, first byte in to last byte out.",
                         ["model", "server", "endpoint"], buckets=LATENCY_BUCKETS, registry=prom)
    ttft = Histogram("llama_balancer_time_to_first_token_seconds",
                     "Time to the first body byte relayed, streamed answers (text/event-stream) only.",
                     ["model", "server", "endpoint"], buckets=LATENCY_BUCKETS, registry=prom)
    prompt = Counter("llama_balancer_prompt_tokens", "Prompt tokens reported by backends, cached ones included.",
                     ["model", "server"], registry=prom)
    cached = Counter("llama_balancer_prompt_cached_tokens", "Of the prompt tokens, those the backend served from its "
                     "prompt cache (counted where it reports them).", ["model", "server"], registry=prom)
    completion = Counter("llama_balancer_completion_tokens", "Completion tokens reported by backends.",
                         ["model", "server"], registry=prom)
    for ex in exchanges:
        server = ex.server or "(none)"
        status = "none" if ex.status is None else str(ex.status)
        instance = ex.instance or "" if ex.model_label != "(other)" else "(other)"
        requests.labels(ex.model_label, server, instance, ex.endpoint_label, status, ex.outcome).inc()
        if ex.ended is not None:
            duration.labels(ex.model_label, server, ex.endpoint_label).observe(ex.ended - ex.started)
        if ex.first_byte is not None and ex.streamed:
            ttft.labels(ex.model_label, server, ex.endpoint_label).observe(ex.first_byte - ex.started)
        if ex.usage is not None:
            if ex.usage.prompt_tokens:
                prompt.labels(ex.model_label, server).inc(ex.usage.prompt_tokens)
                if ex.usage.cached_tokens is not None:
                    cached.labels(ex.model_label, server).inc(ex.usage.cached_tokens)
            if ex.usage.completion_tokens:
                completion.labels(ex.model_label, server).inc(ex.usage.completion_tokens)
    return generate_latest(prom)


def exchange(model: str, server: str | None, status: int | None, took: float, ttft: float | None = None,
             usage: Usage | None = None, outcome: str = "completed") -> Exchange:
    ex = Exchange(request_id="r", endpoint="/v1/chat/completions", endpoint_label="/v1/chat/completions",
                  started=100.0, ip="10.0.0.1", model=model, model_label=model, server=server, instance=model,
                  status=status, ended=100.0 + took, outcome=outcome, usage=usage)
    if ttft is not None:
        ex.first_byte, ex.streamed = 100.0 + ttft, True
    return ex


def without_created(text: str) -> list[str]:
    """The exposition's lines, in order, each ``_created`` sample's time made ``<time>``."""
    return [re.sub(r"^(\S+_created(?:\{.*\})?) \S+$", r"\1 <time>", line) for line in text.splitlines()]


def test_the_exchange_metrics_expose_what_prometheus_clients_children_did():
    exchanges = [
        exchange("tiny", "PC1", 200, 0.004, usage=Usage(12, 9, None)),
        exchange("tiny", "PC1", 200, 0.3, ttft=0.02, usage=Usage(40, 3, 32)),
        exchange("tiny", "PC2", 200, 7.5, ttft=1.0, usage=Usage(0, 5, 0)),
        exchange("tiny", "PC1", 502, 0.01, outcome="upstream_error"),
        exchange("(other)", "PC2", 200, 400.0, usage=Usage(3, None, None)),  # past the last bound
        exchange("tiny", None, None, 0.001, outcome="client_closed"),
        exchange("tiny", "PC1", 200, 0.005, ttft=0.005),  # on a bound: its bucket
    ]
    ours = Metrics(_NoServers())  # type: ignore[arg-type]
    for ex in exchanges:
        ours.observe(ex)
    theirs = reference(exchanges).decode().split("# HELP llama_balancer_inflight_requests")[0]
    mine = ours.exposition().decode().split("# HELP llama_balancer_retries_total")[0]
    assert without_created(mine) == without_created(theirs)
    assert "llama_balancer_request_duration_seconds_bucket" in mine and 'le="+Inf"' in mine


def test_a_counter_that_was_never_fed_is_not_listed():
    ours = Metrics(_NoServers())  # type: ignore[arg-type]
    ours.observe(exchange("tiny", "PC1", 200, 0.1))
    text = ours.exposition().decode()
    assert "llama_balancer_requests_total{" in text and "llama_balancer_request_duration_seconds_count{" in text
    assert "llama_balancer_time_to_first_token_seconds_count{" not in text
    assert "llama_balancer_prompt_tokens_total{" not in text
