"""io/oplog.py and core/throttle.py: one line per record, key=value or JSON; lines that may
repeat at request rate are throttled with a count of what was held back."""
from __future__ import annotations

import logging

import orjson

from llama_balancer.core.config import config_from_data
from llama_balancer.core.config_diff import config_changes, needs_restart
from llama_balancer.core.throttle import Seen, Throttle
from llama_balancer.io.oplog import JsonFormatter, Notices, TextFormatter, event, logfmt_value


def record(message: str, *args, level: int = logging.WARNING, extra: dict | None = None,
           exc: bool = False) -> logging.LogRecord:
    logger = logging.getLogger("llama_balancer.test")
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys
            exc_info = sys.exc_info()
    return logger.makeRecord(logger.name, level, __file__, 1, message, args, exc_info, extra=extra)


def test_an_event_is_one_key_value_line_with_its_fields_then_the_message():
    line = TextFormatter().format(record("%s is down: %s", "PC1", "refused", extra=event(
        "backend_state", server="PC1", to="invalid", reason="connect refused", slots=None, models=["a", "b"])))
    assert "\n" not in line
    assert line.startswith("ts=") and " level=warning event=backend_state server=PC1 to=invalid " in line
    assert 'reason="connect refused" models=a,b msg="PC1 is down: refused"' in line and "slots" not in line


def test_a_record_without_an_event_names_its_logger_and_a_traceback_stays_on_the_line():
    line = TextFormatter().format(record("odd", exc=True))
    assert "\n" not in line and " logger=llama_balancer.test msg=odd exc=\"Traceback" in line
    assert "boom\\nsecond line" in line


def test_json_lines_keep_the_fields_types():
    line = JsonFormatter().format(record("x", extra=event("retry", attempt=2, ok=True, ratio=0.12345)))
    data = orjson.loads(line)
    assert data["event"] == "retry" and data["attempt"] == 2 and data["ok"] is True and data["ratio"] == 0.123
    assert data["level"] == "warning" and data["msg"] == "x" and data["ts"].endswith("Z")


def test_values_are_quoted_only_when_they_must_be():
    assert logfmt_value("plain") == "plain"
    assert logfmt_value('a "b"') == '"a \\"b\\""'
    assert logfmt_value("k=v") == '"k=v"' and logfmt_value("") == '""' and logfmt_value(False) == "false"


def test_the_throttle_admits_a_burst_then_one_a_second_and_counts_the_rest():
    throttle = Throttle(rate=1.0, burst=3)
    assert [throttle.admit("k", 0.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert throttle.admit("other", 0.0) == 0  # per key
    assert throttle.admit("k", 0.5) is None
    assert throttle.admit("k", 1.6) == 3  # three held back since the last line


def test_a_name_is_reported_once_while_remembered():
    seen = Seen(size=2)
    assert [seen.first(n) for n in ("a", "a", "b", "c", "a")] == [True, False, True, True, True]


def test_notices_write_through_the_throttle_with_the_count(caplog):
    notices = Notices(rate=0.001, burst=2)
    logger = logging.getLogger("llama_balancer.test")
    with caplog.at_level(logging.INFO, logger="llama_balancer.test"):
        written = [notices.emit(logger, logging.WARNING, "retry", "k", "line %d", i) for i in range(4)]
    assert written == [True, True, False, False] and len(caplog.records) == 2


def test_a_reload_names_what_changed_and_never_a_key():
    base = {"servers": {"A": {"addr": "http://a", "health-port": 1, "model-port": 2},
                        "B": {"addr": "http://b", "health-port": 1, "model-port": 2}},
            "models": {"x": ["A"], "y": ["B"]}, "auth": {"api_keys": ["secret-1"]}}
    new = {"servers": {"A": {"addr": "http://a", "health-port": 1, "model-port": 3, "kind": "llama.cpp"},
                       "C": {"addr": "http://c", "health-port": 1, "model-port": 2}},
           "models": {"y": ["C"], "z": ["A"]}, "auth": {"api_keys": ["secret-2"]},
           "balancer": {"routing": {"policy": "classic"}}}
    changes = config_changes(config_from_data(base), config_from_data(new))
    fields = changes.fields()
    assert fields["servers_added"] == ["C"] and fields["servers_removed"] == ["B"]
    assert fields["servers_changed"] == ["A(model-port,kind)"]
    assert fields["patterns_added"] == ["z"] and fields["patterns_removed"] == ["x"] and fields["patterns_changed"] == ["y"]
    assert fields["options_changed"] == ["balancer.routing.policy", "auth"]
    assert "secret" not in repr(fields)
    assert config_changes(config_from_data(base), config_from_data(base)).empty


def test_a_reload_names_the_changed_settings_only_a_restart_applies_nested_ones_under_their_parent():
    base = {"servers": {"A": {"addr": "http://a", "health-port": 1, "model-port": 2}}, "models": {"x": ["A"]},
            "balancer": {"shared_state": {"redis_url": "redis://r:6379/0"}}}
    new = {**base, "balancer": {"shared_state": {"redis_url": "redis://r:6379/1", "lease_ttl_s": 8},
                                "upstream_pool_size": 8, "upstream_connect_timeout_s": 5, "access_log": "off"}}
    restart = needs_restart(config_changes(config_from_data(base), config_from_data(new)))
    assert [entry.split(" ")[0] for entry in restart] == ["balancer.upstream_pool_size", "balancer.access_log",
                                                           "balancer.shared_state"]
    assert needs_restart(config_changes(config_from_data(base), config_from_data(base))) == []
