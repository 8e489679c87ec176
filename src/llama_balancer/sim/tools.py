"""Tool calls: which tool a request makes the simulated model call, and with what arguments.

The rule is deterministic, so tests can rely on it: a request that offers tools calls one,
unless its tool choice says ``none`` or the conversation's last message is a tool result
(then the model answers in text, as a real one would after using the tool). The tool is the
one the tool choice names, else the first offered. Its arguments are a JSON object with one
value per property of the tool's parameter schema (the enum's first value, else a value of
the property's type), generated token by token like any text: ``{"city":"sim"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson

from .tokens import tokenize

# A value for each JSON-schema type; a property without a type gets a string.
_VALUES: dict[str, Any] = {"string": "sim", "integer": 1, "number": 1.5, "boolean": True, "array": [],
                           "object": {}, "null": None}


@dataclass(frozen=True)
class Tool:
    """A tool a request offers: its name and its parameters' JSON schema."""

    name: str
    parameters: Any = None


@dataclass(frozen=True)
class ToolCall:
    """The call the simulated model makes: which tool, and the arguments' JSON text."""

    name: str
    arguments: str

    @cached_property
    def pieces(self) -> list[str]:
        """The arguments as generated tokens (their concatenation is the JSON text)."""
        return tokenize(self.arguments)


def planned_call(tools: list[Tool], choice: str | None, last_role: str | None) -> ToolCall | None:
    """The call a request gets (module docstring); ``choice`` is "none", "auto", "required" or
    a tool's name, None meaning "auto"."""
    if not tools or choice == "none" or last_role == "tool":
        return None
    named = [tool for tool in tools if tool.name == choice]
    tool = named[0] if named else tools[0]
    return ToolCall(tool.name, orjson.dumps(arguments_for(tool.parameters)).decode())


def arguments_for(schema: Any) -> dict[str, Any]:
    """One value per property of an object schema, in the schema's order."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {}
    return {name: _value(prop) for name, prop in properties.items()}


def _value(prop: Any) -> Any:
    if not isinstance(prop, dict):
        return "sim"
    enum = prop.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = prop.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first
        kind = kind[0] if kind else None
    return _VALUES.get(kind, "sim") if isinstance(kind, str) else "sim"


def parsed_arguments(arguments: str) -> Any:
    """The arguments as an object (Anthropic's ``input``, Ollama's ``arguments``); ``{}`` while
    the JSON is incomplete (a generation cut short by its token limit)."""
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def call_id(task_id: int) -> str:
    """The tool call's id (llama-server makes a random one per call)."""
    return f"simcall{task_id}"
