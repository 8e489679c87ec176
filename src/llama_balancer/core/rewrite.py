"""Model-name rewrite rules: a fullmatch on the requested model picks a new model name and
fields to merge into the body (e.g. ``gpt-oss:20b-high`` -> reasoning_effort ``high``).

Behaviour lives in configuration, not code; the README and examples/server-list.json show the gpt-oss rules.
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class RewriteRule(BaseModel):
    """``match`` (fullmatch regex) -> ``model`` (template with \\1 groups) + ``merge`` fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str
    model: str = r"\g<0>"
    merge: dict[str, Any] = Field(default_factory=dict)

    @field_validator("match")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @field_validator("model", "merge")
    @classmethod
    def _valid_template(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse at load time a template that would fail on every matching request."""
        if "match" not in info.data:
            return value  # the regex itself was refused
        pattern = re.compile(info.data["match"])
        names = {index: name for name, index in pattern.groupindex.items()}
        probe = "".join(f"(?P<{names[i]}>)" if i in names else "()" for i in range(1, pattern.groups + 1))
        try:
            _expand(value, re.fullmatch(probe, ""))
        except (re.error, IndexError) as exc:
            raise ValueError(f"invalid template: {exc}") from None
        return value


def apply_rewrites(rules: list[RewriteRule], model: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The first rule that fullmatches rewrites; returns (new model, new body) or None.

    The caller's body is not mutated: merged objects are copied on the way down.
    """
    for rule in rules:
        found = re.fullmatch(rule.match, model)
        if found is None:
            continue
        new_model = found.expand(rule.model)
        merged = _deep_merge(body, _expand(rule.merge, found))
        merged["model"] = new_model
        return new_model, merged
    return None


def _expand(value: Any, found: re.Match[str]) -> Any:
    if isinstance(value, str):
        return found.expand(value)
    if isinstance(value, dict):
        return {key: _expand(item, found) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, found) for item in value]
    return value


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
