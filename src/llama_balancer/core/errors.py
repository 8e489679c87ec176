"""One exception tree for the balancer; handlers turn it into OpenAI-style error JSON.

Foreign errors (aiohttp, OS) are mapped to these at the edge, in ``io``.
"""
from __future__ import annotations


def error_envelope(message: str, type_: str, code: str) -> dict:
    """The OpenAI error envelope, ``{"error": {"message", "type", "code"}}``: the one shape
    every error answer has, whichever stack writes it."""
    return {"error": {"message": message, "type": type_, "code": code}}


class BalancerError(Exception):
    """An error with an HTTP status and an OpenAI-style ``type`` / ``code``."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    closes: bool = False  # the connection closes after this answer (what follows cannot be framed)

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        """The OpenAI error envelope (``error_envelope``) for this error."""
        return error_envelope(self.message, self.type, self.code)


class BadRequest(BalancerError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class MissingModel(BadRequest):
    code = "model_missing"


class PayloadTooLarge(BalancerError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class RequestTimeout(BalancerError):
    """The request head or body did not arrive within ``client_header_timeout_s`` of its
    first byte (a slow or stalled client): answered 408, and the connection closes."""

    status, type, code = 408, "invalid_request_error", "request_timeout"
    closes = True


class UpstreamError(BalancerError):
    """The backend could not be reached or broke off; ``kind`` says how."""

    status, type, code = 502, "upstream_error", "bad_gateway"

    def __init__(self, message: str, *, kind: str, server: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "connect" | "timeout" | "reset" | "protocol"
        self.server = server


class UpstreamTimeout(UpstreamError):
    status, code = 504, "gateway_timeout"


class ConfigError(Exception):
    """A refused config: every problem, each prefixed with the JSON path it concerns."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


class NoBackend(BalancerError):
    """No healthy backend serves the model right now."""

    status, type, code = 503, "server_error", "no_backend"


class QueueTimeout(BalancerError):
    """Every backend stayed full until the request's queue deadline."""

    status, type, code = 503, "server_error", "queue_timeout"


class QueueFullError(BalancerError):
    status, type, code = 429, "rate_limit_error", "queue_full"


class ModelNotFound(BalancerError):
    """No server of the request's route lists the model (``balancer.unknown_model: reject``);
    OpenAI answers an unknown model this way."""

    status, type, code = 404, "invalid_request_error", "model_not_found"
