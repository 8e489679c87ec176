"""Detection's pure pieces: is an /llmhealth answer an agent's, the two signals combined, and
the one log line that says what a backend was found to be."""
from __future__ import annotations

import pytest

from llama_balancer.core.health import HealthSample, combine, is_agent_answer, parse_agent_probe
from llama_balancer.core.profile import BackendProfile, agent_hint


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, b"idle", "idle"),
    (200, b'{"status": "busy", "gpu_util_max5s": 91.0}', "busy"),
    (500, b"oops", "invalid"),  # something serves /llmhealth and fails: a broken agent
])
def test_an_agents_answer_is_recognised(status, body, expected):
    sample = parse_agent_probe(status, body)
    assert sample is not None and sample.status == expected


@pytest.mark.parametrize(("status", "body"), [
    (404, b'{"error":{"message":"File Not Found","type":"not_found_error","code":404}}'),  # llama-server
    (401, b"unauthorized"),
    (200, b"<html>a web page</html>"),
    (200, b'{"status": "ok"}'),  # a /health-style answer is no agent protocol
    (200, b"[1, 2]"),
])
def test_anything_else_means_no_agent_runs_there(status, body):
    assert parse_agent_probe(status, body) is None


def test_a_5xx_is_invalid_but_proves_no_agent():
    """A llama-server loading its model answers 503 everywhere (a restart): the old tool read a
    5xx /llmhealth as invalid, and so do we, but it must not make the address an agent's for
    good (after loading, the server's /llmhealth answers 404). Only an idle/busy answer does."""
    loading = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
    sample = parse_agent_probe(503, loading)
    assert sample is not None and sample.status == "invalid"
    assert not is_agent_answer(sample)
    assert not is_agent_answer(None)
    assert is_agent_answer(parse_agent_probe(200, b"busy"))


@pytest.mark.parametrize(("model_side", "agent", "expected"), [
    ("idle", "idle", "idle"), ("idle", "busy", "busy"), ("busy", "idle", "busy"),
    ("invalid", "idle", "invalid"), ("idle", "invalid", "invalid"),
])
def test_the_worse_of_the_two_signals_wins(model_side, agent, expected):
    combined = combine(HealthSample(model_side, detail="m" if model_side == "invalid" else None),
                       HealthSample(agent, 42.0, detail="a" if agent == "invalid" else None))
    assert combined.status == expected and combined.gpu_util == 42.0
    if expected == "invalid":
        assert combined.detail in ("m", "agent: a")


def test_the_log_line_names_kind_slots_models_and_agent():
    profile = BackendProfile("llama.cpp", True, 2, ("a", "b"))
    assert profile.describe("PC1", "http://10.0.0.2:8081", "http://10.0.0.2:18000") == \
        "PC1 http://10.0.0.2:8081 llama.cpp, 2 slots, models [a, b], agent on :18000"
    assert BackendProfile("openai", False).describe("PC2", "http://h:1", "http://h:1") == \
        "PC2 http://h:1 openai, models unknown"
    assert BackendProfile("agent", True, None, ()).describe("PC3", "http://h:1", "http://h:2") == \
        "PC3 http://h:1 agent, models []"


def test_the_agent_hint_depends_on_whether_the_ports_are_shared():
    assert 'remove "kind"' in agent_hint("PC1", "HTTP 404", same_port=True)
    assert agent_hint("PC1", "HTTP 404", same_port=True).startswith("HTTP 404; ")
    assert "llama-balancer serve" in agent_hint("PC1", None, same_port=False)
