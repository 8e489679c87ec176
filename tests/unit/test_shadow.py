"""core/shadow.py: a models pattern that earlier ones leave nothing to match is found,
exactly for regular patterns, and never claimed for what is not modelled."""
from __future__ import annotations

import pytest

from llama_balancer.core.shadow import shadowed_patterns


def shadowed(*patterns: str) -> dict[str, tuple[str, ...]]:
    return {found.pattern: found.by for found in shadowed_patterns(list(patterns))}


@pytest.mark.parametrize("patterns, hidden, by", [
    (("gpt-oss.*", "gpt-oss:20b.*"), "gpt-oss:20b.*", ("gpt-oss.*",)),
    ((".*", "llama-3\\.1-8b"), "llama-3\\.1-8b", (".*",)),
    (("^m$", "m"), "m", ("^m$",)),  # anchors change nothing under fullmatch
    (("a*", "a+"), "a+", ("a*",)),
    (("x{1,3}", "xx"), "xx", ("x{1,3}",)),
    (("(a|b)c", "ac|bc"), "ac|bc", ("(a|b)c",)),
    (("qwen\\d+", "qwen[0-9]+"), "qwen[0-9]+", ("qwen\\d+",)),
    (("\\w+", "é"), "é", ("\\w+",)),  # \w is Unicode's, as Python matches it
    (("(?s).+", "a\nb"), "a\nb", ("(?s).+",)),
])
def test_a_pattern_an_earlier_one_covers_is_reported_with_that_one(patterns, hidden, by):
    assert shadowed(*patterns) == {hidden: by}


def test_patterns_that_cover_it_only_together_are_all_named():
    assert shadowed("a.*", "b.*", "c.*", "[ab]x") == {"[ab]x": ("a.*", "b.*")}


@pytest.mark.parametrize("patterns", [
    ("gpt-oss:20b-64k.*", "gpt-oss:20b-128k.*"),  # the README's sample
    ("llama-3\\.1-8b", "qwen2\\.5-7b", "gpt-oss:20b.*"),  # the demo's
    ("a+", "a*"),  # the empty name is left for the second
    ("x{1,3}", "xxxx"),
    ("qwen[0-9]+", "qwen\\d+"),  # other Unicode digits are left
    ("[a-z]+", "\\w+"),
    (".+", "a\nb"),  # . is not a newline without DOTALL
])
def test_a_pattern_that_still_matches_some_name_is_not_reported(patterns):
    assert shadowed(*patterns) == {}


@pytest.mark.parametrize("patterns", [
    ("(?i)gpt.*", "gpt-4"),  # case-insensitive matching is not modelled: no verdict either way
    ("gpt.*", "(?i)gpt-4"),
    ("(a)\\1", "aa"),  # back-references
    ("(?=g).*", "gpt"),  # look-arounds
    ("\\bgpt.*", "gpt"),
])
def test_what_is_not_modelled_is_never_reported(patterns):
    assert shadowed(*patterns) == {}


def test_a_bad_regex_is_left_to_the_config_check():
    assert shadowed("x(", ".*", "m") == {"m": (".*",)}
