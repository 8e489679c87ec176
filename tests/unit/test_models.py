"""core/models.py: instance variants and the public model list."""
from __future__ import annotations

import pytest

from llama_balancer.core.models import instances_of, is_variant, public_models


@pytest.mark.parametrize("name", ["m-2", "gpt-oss:20b-3", "qwen3-32b-10", "a-0"])
def test_names_ending_in_dash_digits_are_variants(name):
    assert is_variant(name)


@pytest.mark.parametrize("name", ["m", "m-", "-2", "m-x", "qwen3-32b", "m-2b", "gpt-oss:20b-high"])
def test_other_names_are_not_variants(name):
    assert not is_variant(name)


def test_instances_are_the_model_then_numbered_copies_in_numeric_order():
    served = ["m-10", "m-3", "m", "m-2"]

    assert instances_of("m", served) == ["m", "m-2", "m-3", "m-10"]


def test_instances_ignore_non_numeric_suffixes_and_other_models():
    served = ["m-x", "m-2b", "mm-2", "m2", "other", "m-2-3", "other-2", "m-4"]

    assert instances_of("m", served) == ["m-4"]


def test_instances_without_the_plain_model_start_with_the_first_copy():
    assert instances_of("m", ["m-3", "m-2"]) == ["m-2", "m-3"]


def test_no_instances_when_the_model_is_not_served():
    assert instances_of("m", ["other", "other-2"]) == []
    assert instances_of("m", []) == []


def test_model_names_with_dashes_and_colons_keep_their_own_prefix():
    served = ("gpt-oss:20b", "gpt-oss:20b-2", "gpt-oss:20b-64k", "gpt-oss:20b-64k-2")

    assert instances_of("gpt-oss:20b", served) == ["gpt-oss:20b", "gpt-oss:20b-2"]
    assert instances_of("gpt-oss:20b-64k", served) == ["gpt-oss:20b-64k", "gpt-oss:20b-64k-2"]


def test_odd_unicode_digit_suffixes_from_a_backend_do_not_crash_discovery():
    # "²".isdigit() is true but int("²") fails; a backend's model list must not break routing.
    assert instances_of("m", ["m", "m-²", "m-2"]) == ["m", "m-2"]


def test_public_models_hide_variants_deduplicate_and_sort():
    ids = ["qwen3", "gpt-oss:20b-2", "gpt-oss:20b", "qwen3", "llama-3", "llama-3b", "a-model"]

    assert public_models(ids) == ["a-model", "gpt-oss:20b", "llama-3b", "qwen3"]


def test_public_models_of_nothing_is_empty():
    assert public_models([]) == []
