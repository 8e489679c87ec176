"""The conversation, tools and limits of a request, whichever API it speaks.

OpenAI chat (``/v1/chat/completions``), Anthropic Messages (``/v1/messages``), OpenAI
Responses (``/v1/responses``) and Ollama (``/api/chat``, ``/api/generate``) say the same
things in their own shapes. The sim reads each into chat messages (rendered by
``tokens.chat_tokens``, so every API keeps the prompt cache's prefix property across turns),
the tools offered with the tool choice, and the generation limit:

- Anthropic: ``system`` (text or text blocks) becomes a leading system message; a user turn
  made of ``tool_result`` blocks is a ``tool`` message; ``tools[].input_schema``;
  ``tool_choice`` ``{"type": "auto" | "any" | "tool" | "none", "name"}``; ``max_tokens``.
- Responses: ``instructions`` becomes a system message; ``input`` is a string (one user
  turn) or items (messages; ``function_call_output`` is a ``tool`` message, other items an
  assistant turn); ``tools[]`` ``{type: "function", name, parameters}``; ``max_output_tokens``.
- Ollama: ``messages`` as OpenAI's, ``tools`` as OpenAI's, ``options.num_predict``; it
  streams unless ``"stream": false``.
"""

from __future__ import annotations

from typing import Any

from .tools import Tool

CHAT, TEXT, NATIVE, EMBED = "chat", "text", "native", "embed"
MESSAGES, RESPONSES = "messages", "responses"
OLLAMA_CHAT, OLLAMA_GENERATE, OLLAMA_EMBED, OLLAMA_EMBEDDINGS = "ollama-chat", "ollama-generate", "ollama-embed", \
    "ollama-embeddings"
OLLAMA = frozenset({OLLAMA_CHAT, OLLAMA_GENERATE, OLLAMA_EMBED, OLLAMA_EMBEDDINGS})
EMBEDDINGS = frozenset({EMBED, OLLAMA_EMBED, OLLAMA_EMBEDDINGS})
# Endpoints whose prompt is a conversation (chat_messages below).
CONVERSATIONS = frozenset({CHAT, MESSAGES, RESPONSES, OLLAMA_CHAT})

_LIMIT_KEYS: dict[str, tuple[str, ...]] = {
    CHAT: ("max_completion_tokens", "max_tokens"),
    NATIVE: ("n_predict", "max_tokens"),
    MESSAGES: ("max_tokens",),
    RESPONSES: ("max_output_tokens",),
}


def chat_messages(kind: str, body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The conversation as chat messages; None when the body has none in its API's shape."""
    if kind == MESSAGES:
        messages = body.get("messages")
        if not _objects(messages):
            return None
        system = body.get("system")
        lead = [{"role": "system", "content": system}] if system else []
        return lead + [_anthropic_turn(m) for m in messages]
    if kind == RESPONSES:
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        if not _objects(items):
            return None
        instructions = body.get("instructions")
        lead = [{"role": "system", "content": instructions}] if instructions else []
        return lead + [_responses_item(item) for item in items]
    messages = body.get("messages")
    return messages if _objects(messages) else None


def _objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _anthropic_turn(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list) and content and all(
            isinstance(block, dict) and block.get("type") == "tool_result" for block in content):
        return {"role": "tool", "content": [_result_text(block.get("content")) for block in content]}
    return message


def _result_text(content: Any) -> dict[str, Any]:
    if isinstance(content, list):  # text blocks
        text = "".join(b.get("text", "") for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    else:
        text = content if isinstance(content, str) else ""
    return {"type": "text", "text": text}


def _responses_item(item: dict[str, Any]) -> dict[str, Any]:
    if "role" in item:
        return item
    if item.get("type") == "function_call_output":
        output = item.get("output")
        return {"role": "tool", "content": output if isinstance(output, str) else str(output)}
    arguments = item.get("arguments")
    return {"role": "assistant", "content": f"{item.get('name', '')}{arguments if isinstance(arguments, str) else ''}"}


def offered_tools(kind: str, body: dict[str, Any]) -> list[Tool]:
    """The function tools a request offers, in order."""
    raw = body.get("tools")
    if kind not in CONVERSATIONS or not isinstance(raw, list):
        return []
    tools = []
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        if kind == MESSAGES:
            name, schema = entry.get("name"), entry.get("input_schema")
        elif kind == RESPONSES:
            name, schema = entry.get("name"), entry.get("parameters")
        else:
            function = entry.get("function")
            function = function if isinstance(function, dict) else {}
            name, schema = function.get("name"), function.get("parameters")
        if isinstance(name, str) and name:
            tools.append(Tool(name, schema))
    return tools


def tool_choice(kind: str, body: dict[str, Any]) -> str | None:
    """"none", "auto", "required" or a tool's name; None when the request says nothing."""
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        return choice
    if not isinstance(choice, dict):
        return None
    if kind == MESSAGES:
        kind_of = choice.get("type")
        if kind_of == "tool":
            return str(choice.get("name", ""))
        return {"any": "required", "none": "none"}.get(str(kind_of), "auto")
    function = choice.get("function")
    if isinstance(function, dict):  # chat: {"type": "function", "function": {"name"}}
        return str(function.get("name", ""))
    return str(choice["name"]) if "name" in choice else None  # responses: {"type": "function", "name"}


def limit_value(kind: str, body: dict[str, Any]) -> Any:
    """The raw value of the request's generation limit (validated by the caller)."""
    if kind in OLLAMA:
        options = body.get("options")
        return options.get("num_predict") if isinstance(options, dict) else None
    for key in _LIMIT_KEYS.get(kind, ("max_tokens",)):
        value = body.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def streams(kind: str, body: dict[str, Any]) -> bool:
    """Whether the answer is streamed: Ollama streams by default, the others on request."""
    if kind in EMBEDDINGS:
        return False
    if kind in OLLAMA:
        return body.get("stream") is not False
    return body.get("stream") is True
