"""Sampling parameters in the shapes llama-server shows them.

The same set appears as ``/props`` ``default_generation_settings.params`` and as a used
slot's ``params`` in ``/slots``; a native ``/completion`` answer's ``generation_settings``
adds the request-only fields (stop words, grammar, logit bias). Keys, order and value types
are a real server's (llama.cpp as vendored in llama-cpp-python 0.3.36); the sim echoes the
few values a request sets (``n_predict``/``max_tokens``, ``stream``, ``temperature``,
``ignore_eos``) and shows the defaults for the rest.
"""

from __future__ import annotations

from typing import Any

SAMPLERS = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
DEFAULT_TEMPERATURE = 0.8
EOS_TOKEN_IDS = (2, 32001)  # what ignore_eos biases away on the tiny test model: </s>, <|im_end|>

# (key, default, request-only): request-only keys are in generation_settings alone.
_FIELDS: tuple[tuple[str, Any, bool], ...] = (
    ("seed", 4294967295, False),
    ("temperature", DEFAULT_TEMPERATURE, False),
    ("dynatemp_range", 0.0, False),
    ("dynatemp_exponent", 1.0, False),
    ("top_k", 40, False),
    ("top_p", 0.95, False),
    ("min_p", 0.05, False),
    ("top_n_sigma", -1.0, False),
    ("xtc_probability", 0.0, False),
    ("xtc_threshold", 0.1, False),
    ("typical_p", 1.0, False),
    ("repeat_last_n", 64, False),
    ("repeat_penalty", 1.0, False),
    ("presence_penalty", 0.0, False),
    ("frequency_penalty", 0.0, False),
    ("dry_multiplier", 0.0, False),
    ("dry_base", 1.75, False),
    ("dry_allowed_length", 2, False),
    ("dry_penalty_last_n", 64, False),
    ("dry_sequence_breakers", ("\n", ":", "\"", "*"), True),
    ("mirostat", 0, False),
    ("mirostat_tau", 5.0, False),
    ("mirostat_eta", 0.1, False),
    ("adaptive_target", -1.0, False),
    ("adaptive_decay", 0.9, False),
    ("stop", (), True),
    ("max_tokens", -1, False),
    ("n_predict", -1, False),
    ("n_keep", 0, False),
    ("n_discard", 0, False),
    ("ignore_eos", False, False),
    ("stream", False, False),
    ("logit_bias", (), True),
    ("n_probs", 0, False),
    ("min_keep", 0, False),
    ("grammar", "", True),
    ("grammar_lazy", False, True),
    ("grammar_triggers", (), True),
    ("preserved_tokens", (), True),
    ("chat_format", "Content-only", False),
    ("reasoning_format", "none", False),
    ("reasoning_in_content", False, False),
    ("generation_prompt", "", False),
    ("samplers", SAMPLERS, False),
    ("speculative.types", "none", False),
    ("timings_per_token", False, False),
    ("post_sampling_probs", False, False),
    ("backend_sampling", False, False),
    ("lora", (), False),
)


def _fields(request_only: bool) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value, only in _FIELDS if request_only or not only}


def slot_params(n_predict: int = -1, stream: bool = False, temperature: float = DEFAULT_TEMPERATURE,
                ignore_eos: bool = False) -> dict[str, Any]:
    """A slot's ``params`` (and ``/props``' defaults, called without arguments)."""
    out = _fields(request_only=False)
    out.update(max_tokens=n_predict, n_predict=n_predict, stream=stream, temperature=temperature,
               ignore_eos=ignore_eos)
    return out


def generation_settings(n_predict: int = -1, stream: bool = False, temperature: float = DEFAULT_TEMPERATURE,
                        ignore_eos: bool = False) -> dict[str, Any]:
    """A native answer's ``generation_settings``: the slot's params plus the request-only ones."""
    out = _fields(request_only=True)
    out.update(slot_params(n_predict, stream, temperature, ignore_eos))
    if ignore_eos:
        out["logit_bias"] = [{"bias": None, "token": token} for token in EOS_TOKEN_IDS]
    return out
