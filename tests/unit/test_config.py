"""core/config.py: the server-list.json model, its defaults and its path-named refusals."""
from __future__ import annotations

import json
from typing import Any

import pytest

from llama_balancer.core import config as config_module
from llama_balancer.core.config import (
    BalancerOptions,
    ServerConfig,
    config_from_data,
    format_path,
    parse_config,
)
from llama_balancer.core.errors import ConfigError

SPEC_EXAMPLE = """
{
  "servers": {
    "PC1": { "addr": "http://192.168.1.20", "health-port": 18000, "model-port": 8081, "request-max": 1 },
    "PC2": { "addr": "http://192.168.1.21", "health-port": 18000, "model-port": 8081 }
  },
  "models": {
    "gpt-oss:20b-64k.*": ["PC1", "PC2"],
    "gpt-oss:20b-128k.*": ["PC1"]
  },
  "fallback_server": "PC2"
}
"""


def server(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"addr": "http://192.168.1.20", "health-port": 18000, "model-port": 8081}
    entry.update(overrides)
    return {key: value for key, value in entry.items() if value is not _DROP}


_DROP = object()


def with_servers(servers: Any, **rest: Any) -> dict[str, Any]:
    return {"servers": servers, **rest}


def one_server(**overrides: Any) -> dict[str, Any]:
    return with_servers({"PC1": server(**overrides)})


def problems_of(raw: bytes | str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return caught.value.problems


# --- the file that works ------------------------------------------------------------------


def test_spec_example_file_parses_with_servers_models_and_fallback():
    config = parse_config(SPEC_EXAMPLE)

    assert list(config.servers) == ["PC1", "PC2"]
    assert list(config.models) == ["gpt-oss:20b-64k.*", "gpt-oss:20b-128k.*"]
    assert config.models["gpt-oss:20b-64k.*"] == ["PC1", "PC2"]
    assert config.fallback == "PC2"
    pc1, pc2 = config.servers["PC1"], config.servers["PC2"]
    assert pc1.request_max == 1
    assert pc2.request_max is None


def test_server_bases_join_addr_and_ports():
    config = parse_config(SPEC_EXAMPLE)

    pc1 = config.servers["PC1"]
    assert pc1.model_base == "http://192.168.1.20:8081"
    assert pc1.health_base == "http://192.168.1.20:18000"


def test_trailing_slash_on_addr_is_dropped_from_the_bases():
    config = config_from_data(one_server(addr="https://gpu.example/"))

    assert config.servers["PC1"].model_base == "https://gpu.example:8081"


def test_parse_config_accepts_bytes_as_well_as_text():
    assert parse_config(SPEC_EXAMPLE.encode()).fallback == "PC2"


def test_fallback_defaults_to_the_first_server_in_file_order():
    config = config_from_data(with_servers({"B": server(), "A": server(), "C": server()}))

    assert config.fallback_server is None
    assert config.fallback == "B"


def test_numeric_strings_for_ports_and_request_max_are_accepted_like_the_old_tool():
    config = config_from_data(one_server(**{"model-port": "8081", "health-port": "18000", "request-max": "2"}))

    pc1 = config.servers["PC1"]
    assert (pc1.model_port, pc1.health_port, pc1.request_max) == (8081, 18000, 2)


def test_request_max_null_means_no_cap():
    config = config_from_data(one_server(**{"request-max": None}))

    assert config.servers["PC1"].request_max is None


def test_defaults_for_balancer_options_match_the_spec():
    options = config_from_data(one_server()).balancer

    assert options == BalancerOptions()
    assert options.health_poll_interval_s == 1.0
    assert options.health_window == 5
    assert options.health_connect_timeout_s == 5.0
    assert options.health_read_timeout_s == 2.0
    assert options.models_cache_ttl_s == 10.0
    assert options.sticky_ttl_s == 180.0
    assert options.upstream_connect_timeout_s == 300.0
    assert options.upstream_idle_timeout_s is None
    assert options.gpu_busy_threshold == 50.0
    assert options.access_log_window_s == 3600.0


def test_balancer_options_from_the_file_override_defaults():
    config = config_from_data({**one_server(), "balancer": {"sticky_ttl_s": 5, "health_window": 3}})

    assert config.balancer.sticky_ttl_s == 5.0
    assert config.balancer.health_window == 3
    assert config.balancer.health_poll_interval_s == 1.0


def test_unknown_top_level_keys_are_ignored_and_listed():
    data = {**one_server(), "comment": "hi", "legacy": 1, "fallback_server": "PC1"}

    config = config_from_data(data)

    assert config.fallback == "PC1"
    assert config_module.unknown_top_level_keys(data) == ["comment", "legacy"]


def test_no_unknown_top_level_keys_in_the_spec_example():
    assert config_module.unknown_top_level_keys(json.loads(SPEC_EXAMPLE)) == []


def test_server_config_can_still_be_built_by_field_name_in_code():
    built = ServerConfig(addr="http://h", health_port=1, model_port=2)

    assert built.model_base == "http://h:2"


# --- patterns -----------------------------------------------------------------------------


def test_candidates_use_fullmatch_not_search():
    config = parse_config(SPEC_EXAMPLE)

    assert config.candidates_for("gpt-oss:20b-64k") == ["PC1", "PC2"]
    assert config.candidates_for("gpt-oss:20b-64k-high") == ["PC1", "PC2"]
    assert config.candidates_for("x-gpt-oss:20b-64k") is None
    assert config.candidates_for("gpt-oss:20b") is None


def test_a_pattern_without_wildcard_matches_only_the_whole_name():
    data = with_servers({"A": server(), "B": server()}, models={"qwen3": ["A"], "qwen3-.*": ["B"]})
    config = config_from_data(data)

    assert config.candidates_for("qwen3") == ["A"]
    assert config.candidates_for("qwen3-32b") == ["B"]
    assert config.candidates_for("qwen") is None


def test_first_matching_pattern_in_file_order_wins():
    data = with_servers(
        {"A": server(), "B": server()},
        models={"qwen.*": ["A"], "qwen3.*": ["B"], ".*": ["B", "A"]},
    )
    config = config_from_data(data)

    assert config.candidates_for("qwen3-32b") == ["A"]
    assert config.candidates_for("llama") == ["B", "A"]


def test_file_order_wins_even_when_a_later_pattern_is_more_specific():
    data = with_servers({"A": server(), "B": server()}, models={".*": ["A"], "exact": ["B"]})

    assert config_from_data(data).candidates_for("exact") == ["A"]


def test_no_models_section_means_every_model_goes_to_the_fallback():
    config = config_from_data(one_server())

    assert config.candidates_for("anything") is None


# --- refusals -----------------------------------------------------------------------------

# (name, file text, expected path prefix of the first problem)
MALFORMED: list[tuple[str, str, str]] = [
    ("not json", "{servers: }", "(file): not valid JSON"),
    ("root is an array", "[]", "(root): "),
    ("root is a string", '"servers"', "(root): "),
    ("servers missing", "{}", "servers: "),
    ("servers empty", json.dumps({"servers": {}}), "servers: "),
    ("servers not an object", json.dumps({"servers": ["PC1"]}), "servers: "),
    ("server not an object", json.dumps(with_servers({"PC1": "http://h"})), "servers.PC1: "),
    ("addr missing", json.dumps(one_server(addr=_DROP)), "servers.PC1.addr: "),
    ("addr not a string", json.dumps(one_server(addr=5)), "servers.PC1.addr: "),
    ("addr without scheme", json.dumps(one_server(addr="192.168.1.20")), "servers.PC1.addr: "),
    ("addr with other scheme", json.dumps(one_server(addr="ftp://h")), "servers.PC1.addr: "),
    ("addr with port", json.dumps(one_server(addr="http://h:8081")), "servers.PC1.addr: "),
    ("addr with path", json.dumps(one_server(addr="http://h/v1")), "servers.PC1.addr: "),
    ("model-port missing", json.dumps(one_server(**{"model-port": _DROP})), "servers.PC1.model-port: "),
    ("model-port non-numeric", json.dumps(one_server(**{"model-port": "8081a"})), "servers.PC1.model-port: "),
    ("model-port fractional", json.dumps(one_server(**{"model-port": 8081.5})), "servers.PC1.model-port: "),
    ("health-port too high", json.dumps(one_server(**{"health-port": 70000})), "servers.PC1.health-port: "),
    ("health-port zero", json.dumps(one_server(**{"health-port": 0})), "servers.PC1.health-port: "),
    ("request-max zero", json.dumps(one_server(**{"request-max": 0})), "servers.PC1.request-max: "),
    ("request-max negative", json.dumps(one_server(**{"request-max": -3})), "servers.PC1.request-max: "),
    ("request-max string", json.dumps(one_server(**{"request-max": "many"})), "servers.PC1.request-max: "),
    ("unknown server field", json.dumps(one_server(colour="red")), "servers.PC1.colour: "),
    (
        "models not an object",
        json.dumps({**one_server(), "models": ["gpt.*"]}),
        "models: ",
    ),
    (
        "models value not a list",
        json.dumps({**one_server(), "models": {"gpt-oss:20b.*": "PC1"}}),
        'models["gpt-oss:20b.*"]: ',
    ),
    (
        "models names unknown server",
        json.dumps({**one_server(), "models": {"gpt-oss:20b.*": ["PC1", "PC9"]}}),
        'models["gpt-oss:20b.*"][1]: ',
    ),
    (
        "models invalid regex",
        json.dumps({**one_server(), "models": {"gpt-(oss": ["PC1"]}}),
        'models["gpt-(oss"]: ',
    ),
    (
        "models empty server list",
        json.dumps({**one_server(), "models": {"qwen.*": []}}),
        'models["qwen.*"]: ',
    ),
    ("fallback unknown", json.dumps({**one_server(), "fallback_server": "PC9"}), "fallback_server: "),
    ("fallback not a string", json.dumps({**one_server(), "fallback_server": 1}), "fallback_server: "),
    (
        "rewrites invalid regex",
        json.dumps({**one_server(), "rewrites": [{"match": "(gpt-oss.*", "model": "x"}]}),
        "rewrites[0].match: ",
    ),
    (
        "rewrites not a list",
        json.dumps({**one_server(), "rewrites": {"match": "x"}}),
        "rewrites: ",
    ),
    (
        "rewrite unknown field",
        json.dumps({**one_server(), "rewrites": [{"match": "x", "modle": "y"}]}),
        "rewrites[0].modle: ",
    ),
    (
        "rewrite template refers to a missing group",
        json.dumps({**one_server(), "rewrites": [{"match": "(a)-(b)", "model": "\\3"}]}),
        "rewrites[0].model: ",
    ),
    (
        "rewrite merge template with a bad escape",
        json.dumps({**one_server(), "rewrites": [{"match": "(a)", "merge": {"x": "\\d"}}]}),
        "rewrites[0].merge: ",
    ),
    (
        "balancer option wrong type",
        json.dumps({**one_server(), "balancer": {"sticky_ttl_s": "long"}}),
        "balancer.sticky_ttl_s: ",
    ),
    (
        "balancer option out of range",
        json.dumps({**one_server(), "balancer": {"health_window": 0}}),
        "balancer.health_window: ",
    ),
    (
        "balancer unknown option",
        json.dumps({**one_server(), "balancer": {"sticky_ttl": 5}}),
        "balancer.sticky_ttl: ",
    ),
    ("balancer not an object", json.dumps({**one_server(), "balancer": 3}), "balancer: "),
]


def test_malformed_cases_are_all_distinct():
    texts = [text for _, text, _ in MALFORMED]
    assert len(set(texts)) == len(texts) >= 12


@pytest.mark.parametrize(("text", "prefix"), [(t, p) for _, t, p in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_malformed_file_is_refused_with_a_problem_naming_its_path(text, prefix):
    problems = problems_of(text)

    assert problems, "a ConfigError must carry at least one problem"
    assert any(problem.startswith(prefix) for problem in problems), problems
    # Every problem is "path: message", with a non-empty message.
    for problem in problems:
        path, sep, message = problem.partition(": ")
        assert sep and path and message.strip(), problem


def test_non_numeric_model_port_is_refused_with_the_exact_message():
    assert problems_of(json.dumps(one_server(**{"model-port": "8081a"}))) == [
        'servers.PC1.model-port: expected an integer, got "8081a"'
    ]


def test_health_port_out_of_range_is_refused_with_the_exact_message():
    assert problems_of(json.dumps(one_server(**{"health-port": 70000}))) == [
        "servers.PC1.health-port: must be at most 65535, got 70000"
    ]


def test_request_max_zero_and_string_are_refused_with_exact_messages():
    assert problems_of(json.dumps(one_server(**{"request-max": 0}))) == [
        "servers.PC1.request-max: must be greater than 0, got 0"
    ]
    assert problems_of(json.dumps(one_server(**{"request-max": "many"}))) == [
        'servers.PC1.request-max: expected an integer, got "many"'
    ]


def test_missing_addr_is_refused_with_the_exact_message():
    assert problems_of(json.dumps(one_server(addr=_DROP))) == ["servers.PC1.addr: required field is missing"]


def test_server_that_is_not_an_object_reads_like_the_other_type_errors():
    assert problems_of(json.dumps(with_servers({"PC1": "http://h"}))) == [
        'servers.PC1: expected a JSON object, got "http://h"'
    ]


def test_typo_model_port_with_underscore_is_an_unknown_field_not_an_alias():
    problems = problems_of(json.dumps(with_servers({"PC1": {"addr": "http://h", "health-port": 1, "model_port": 2}})))

    assert problems == [
        "servers.PC1.model-port: required field is missing",
        "servers.PC1.model_port: unknown field",
    ]


def test_unknown_server_in_models_is_refused_with_index_path_and_name():
    problems = problems_of(json.dumps({**one_server(), "models": {"gpt-oss:20b.*": ["PC1", "PC9"]}}))

    assert problems == ["models[\"gpt-oss:20b.*\"][1]: unknown server 'PC9'"]


def test_empty_server_list_for_a_pattern_is_refused_with_the_exact_message():
    problems = problems_of(json.dumps({**one_server(), "models": {"qwen.*": []}}))

    assert problems == ['models["qwen.*"]: expected at least one server name']


def test_unknown_fallback_server_is_refused_with_the_exact_message():
    assert problems_of(json.dumps({**one_server(), "fallback_server": "PC9"})) == [
        "fallback_server: unknown server 'PC9'"
    ]


def test_balancer_option_of_wrong_type_is_refused_with_the_exact_message():
    assert problems_of(json.dumps({**one_server(), "balancer": {"sticky_ttl_s": "long"}})) == [
        'balancer.sticky_ttl_s: expected a number, got "long"'
    ]


def test_root_that_is_not_an_object_names_its_type():
    assert problems_of("[]") == ["(root): expected a JSON object, got an array"]


def test_every_problem_in_a_file_is_reported_not_just_the_first():
    data = with_servers(
        {
            "PC1": server(**{"model-port": "x"}),
            "PC2": server(addr="nohost", **{"request-max": -1}),
        }
    )

    problems = problems_of(json.dumps(data))

    assert sorted(p.split(":")[0] for p in problems) == [
        "servers.PC1.model-port",
        "servers.PC2.addr",
        "servers.PC2.request-max",
    ]


def test_cross_check_reports_every_bad_reference_together():
    data = {
        **with_servers({"PC1": server()}),
        "models": {"a(": ["PC1"], "b.*": ["PC7", "PC8"]},
        "fallback_server": "PC0",
    }

    problems = problems_of(json.dumps(data))

    assert [p.split(": ")[0] for p in problems] == [
        'models["a("]',
        'models["b.*"][0]',
        'models["b.*"][1]',
        "fallback_server",
    ]


def test_server_names_with_odd_characters_are_quoted_in_paths():
    problems = problems_of(json.dumps(with_servers({"PC 1.lan": server(**{"model-port": "x"})})))

    assert problems == ['servers["PC 1.lan"].model-port: expected an integer, got "x"']


def test_config_error_str_lists_one_problem_per_line():
    error = ConfigError(["a: one", "b: two"])

    assert str(error) == "a: one\nb: two"
    assert error.problems == ["a: one", "b: two"]


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("servers", "PC1", "model-port"), "servers.PC1.model-port"),
        (("models", "gpt-oss:20b.*", 1), 'models["gpt-oss:20b.*"][1]'),
        (("rewrites", 0, "match"), "rewrites[0].match"),
        (("my_server-2",), "my_server-2"),
        ((), "(root)"),
    ],
)
def test_format_path_writes_dotted_words_quoted_keys_and_indexes(loc, expected):
    assert format_path(loc) == expected
