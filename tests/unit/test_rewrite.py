"""core/rewrite.py: model-name rewrite rules, configured as data (SPEC: model-name suffixes)."""
from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from llama_balancer.core.config import config_from_data
from llama_balancer.core.rewrite import RewriteRule, apply_rewrites

# The two documented gpt-oss examples, exactly as an operator writes them in server-list.json.
GPT_OSS_REWRITES = [
    {
        "match": "(gpt-oss.*)-(low|medium|high)",
        "model": "\\1",
        "merge": {"chat_template_kwargs": {"reasoning_effort": "\\2"}},
    },
    {"match": "(gpt-oss.*)-(apply|edit)", "model": "\\1", "merge": {"reasoning_format": "auto"}},
]


@pytest.fixture
def rules() -> list[RewriteRule]:
    data = {
        "servers": {"PC1": {"addr": "http://h", "health-port": 18000, "model-port": 8081}},
        "rewrites": GPT_OSS_REWRITES,
    }
    return config_from_data(data).rewrites


def test_reasoning_effort_suffix_becomes_chat_template_kwarg(rules):
    body = {"model": "gpt-oss:20b-high", "messages": [{"role": "user", "content": "hi"}]}

    result = apply_rewrites(rules, "gpt-oss:20b-high", body)

    assert result is not None
    model, new_body = result
    assert model == "gpt-oss:20b"
    assert new_body == {
        "model": "gpt-oss:20b",
        "messages": [{"role": "user", "content": "hi"}],
        "chat_template_kwargs": {"reasoning_effort": "high"},
    }


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_every_reasoning_effort_level_is_carried_over(rules, effort):
    model, body = apply_rewrites(rules, f"gpt-oss:120b-64k-{effort}", {"model": "x"})

    assert model == "gpt-oss:120b-64k"
    assert body["chat_template_kwargs"] == {"reasoning_effort": effort}


@pytest.mark.parametrize("suffix", ["apply", "edit"])
def test_ide_agent_suffix_is_stripped_with_reasoning_format_auto(rules, suffix):
    model, body = apply_rewrites(rules, f"gpt-oss:20b-{suffix}", {"model": f"gpt-oss:20b-{suffix}"})

    assert model == "gpt-oss:20b"
    assert body == {"model": "gpt-oss:20b", "reasoning_format": "auto"}


def test_existing_chat_template_kwargs_are_deep_merged_not_replaced(rules):
    body = {"model": "gpt-oss:20b-low", "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"}}

    _, new_body = apply_rewrites(rules, "gpt-oss:20b-low", body)

    assert new_body["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": "low"}


def test_callers_body_is_not_mutated(rules):
    body = {"model": "gpt-oss:20b-medium", "chat_template_kwargs": {"enable_thinking": True}, "stream": True}
    before = copy.deepcopy(body)

    _, new_body = apply_rewrites(rules, "gpt-oss:20b-medium", body)

    assert body == before
    assert new_body is not body
    assert new_body["chat_template_kwargs"] is not body["chat_template_kwargs"]


def test_rule_templates_are_not_shared_between_calls(rules):
    _, first = apply_rewrites(rules, "gpt-oss:20b-low", {"model": "m"})
    first["chat_template_kwargs"]["reasoning_effort"] = "tampered"

    _, second = apply_rewrites(rules, "gpt-oss:20b-low", {"model": "m"})

    assert second["chat_template_kwargs"] == {"reasoning_effort": "low"}
    assert rules[0].merge == {"chat_template_kwargs": {"reasoning_effort": "\\2"}}


@pytest.mark.parametrize("name", ["gpt-oss:20b", "gpt-oss:20b-ultra", "llama3-high", "xgpt-oss:20b-high-", "qwen3"])
def test_non_matching_names_are_untouched(rules, name):
    assert apply_rewrites(rules, name, {"model": name}) is None


def test_match_is_a_fullmatch_so_a_trailing_suffix_does_not_count(rules):
    assert apply_rewrites(rules, "gpt-oss:20b-high-2", {"model": "m"}) is None


def test_no_rules_means_no_rewrite():
    assert apply_rewrites([], "gpt-oss:20b-high", {"model": "gpt-oss:20b-high"}) is None


def test_first_matching_rule_wins():
    rules = [
        RewriteRule(match="(m)-(x)", model="first-\\1", merge={"a": 1}),
        RewriteRule(match="(m)-.*", model="second-\\1", merge={"b": 2}),
    ]

    model, body = apply_rewrites(rules, "m-x", {"model": "m-x"})

    assert model == "first-m"
    assert body == {"model": "first-m", "a": 1}


def test_later_rule_applies_when_earlier_ones_do_not_match():
    rules = [
        RewriteRule(match="(m)-(x)", model="first-\\1"),
        RewriteRule(match="(m)-.*", model="second-\\1"),
    ]

    assert apply_rewrites(rules, "m-y", {"model": "m-y"})[0] == "second-m"


def test_default_model_template_keeps_the_name_and_only_merges():
    rule = RewriteRule(match="qwen3-.*", merge={"temperature": 0.6})

    model, body = apply_rewrites([rule], "qwen3-32b", {"model": "qwen3-32b", "temperature": 1.0})

    assert model == "qwen3-32b"
    assert body == {"model": "qwen3-32b", "temperature": 0.6}


def test_templates_expand_inside_nested_lists_and_keep_other_types():
    rule = RewriteRule(
        match="(?P<base>m)-(?P<tag>[a-z]+)",
        model="\\g<base>",
        merge={"stop": ["<\\g<tag>>"], "n": 2, "flag": True, "nested": {"k": ["\\1", None]}},
    )

    _, body = apply_rewrites([rule], "m-end", {"model": "m-end"})

    assert body == {"model": "m", "stop": ["<end>"], "n": 2, "flag": True, "nested": {"k": ["m", None]}}


def test_merge_replaces_a_non_object_value_with_an_object():
    rule = RewriteRule(match="m", merge={"chat_template_kwargs": {"a": 1}})

    _, body = apply_rewrites([rule], "m", {"model": "m", "chat_template_kwargs": "oops"})

    assert body["chat_template_kwargs"] == {"a": 1}


def test_rule_with_invalid_regex_is_refused():
    with pytest.raises(ValidationError, match="invalid regular expression"):
        RewriteRule(match="(gpt", model="x")


def test_rule_with_template_naming_a_missing_group_is_refused_at_load_time():
    with pytest.raises(ValidationError, match="invalid template"):
        RewriteRule(match="(a)", model="\\2")
    with pytest.raises(ValidationError, match="invalid template"):
        RewriteRule(match="(a)", merge={"x": {"y": "\\g<missing>"}})


def test_rule_with_unknown_field_is_refused():
    with pytest.raises(ValidationError):
        RewriteRule(match="a", modle="b")
