"""The ``server-list.json`` model: parsed once, validated, refused with path-named errors.

The file format is the old Flask tool's (``servers``, ``models``, ``fallback_server``) plus
optional sections of ours (``rewrites``, ``balancer``), so existing files load unchanged.
"""
from __future__ import annotations

import re
from functools import cached_property
from ipaddress import ip_network
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .errors import ConfigError
from .placement import PlacementKnobs
from .signals import BackendKind
from .rewrite import RewriteRule

CANDIDATES_CACHED = 4096  # distinct requested model names whose route is remembered
_PATH_WORD = re.compile(r"^[A-Za-z0-9_-]+$")


class ServerConfig(BaseModel):
    """One GPU machine: its model API is ``addr:model-port``, its agent ``addr:health-port``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    addr: str
    health_port: int = Field(alias="health-port", ge=1, le=65535)
    model_port: int = Field(alias="model-port", ge=1, le=65535)
    request_max: int | None = Field(default=None, alias="request-max", gt=0)
    # How its load is read: detected (the default: llama-server, vLLM or plain OpenAI on the
    # model port, plus an /llmhealth agent on the health port where one answers), or forced:
    # the agent alone (the old tool's protocol), llama-server's /health /slots /metrics,
    # vLLM's /metrics, plain OpenAI liveness.
    kind: BackendKind = "auto"
    # Sent upstream as "Authorization: Bearer ..."; never shown in snapshots or logs.
    api_key: str | None = Field(default=None, min_length=1, repr=False)

    @field_validator("addr")
    @classmethod
    def _addr_is_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected a base URL with scheme, like http://192.168.1.20, got {value!r}")
        if parts.port is not None or parts.path not in ("", "/") or parts.query:
            raise ValueError(f"expected scheme and host only (ports are separate fields), got {value!r}")
        return value.rstrip("/")

    @property
    def model_base(self) -> str:
        return f"{self.addr}:{self.model_port}"

    @property
    def health_base(self) -> str:
        return f"{self.addr}:{self.health_port}"


class RoutingOptions(BaseModel):
    """Which policy places requests, and its knobs (see core/placement.py for their meaning)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["cache-aware", "classic", "round-robin", "least-loaded"] = "cache-aware"
    balance_abs_threshold: int = Field(2, ge=0)
    balance_rel_threshold: float = Field(1.5, ge=1.0)
    min_match_chars: int = Field(64, ge=0)
    min_match_ratio: float = Field(0.1, ge=0, le=1)
    sticky_margin_chars: int = Field(256, ge=0)
    pin_slots: bool = True
    affinity_entries: int = Field(4096, ge=16)  # remembered prefixes per server x instance
    poll_max_age_s: float = Field(3.0, gt=0)  # polled load older than this is ignored
    queue_max: int = Field(256, ge=0)
    queue_timeout_s: float = Field(60.0, gt=0)
    # For this long after it queued, a request offered a place that holds less of its prompt
    # than of another waiting request's lets that one go first (0: strict fair order).
    queue_cache_wait_s: float = Field(2.0, ge=0)
    # A request may wait, for at most this long after it arrived, for the busy slot that
    # holds much more of its prompt (hold_min_gain_ratio of it) than any idle one, when that
    # slot is expected to free in time (0: never wait while a slot is idle).
    cache_hold_s: float = Field(0.5, ge=0)
    # Where the server's prefill pace is known (llama-server's timings), longer: up to this
    # long after arrival, when the wait costs less than the prefill and eviction it saves.
    cache_hold_max_s: float = Field(10.0, ge=0)
    hold_min_gain_ratio: float = Field(0.25, ge=0, le=1)
    max_retries: int = Field(2, ge=0)
    retry_statuses: list[int] = Field(default_factory=lambda: [502, 503, 504])
    circuit_failures: int = Field(3, ge=1)  # consecutive failures that open the circuit
    circuit_open_s: float = Field(10.0, gt=0)

    def knobs(self) -> PlacementKnobs:
        """The placement knobs these options set (built once: the options are frozen)."""
        return self.placement_knobs

    @cached_property
    def placement_knobs(self) -> PlacementKnobs:
        """``knobs()``, cached on the frozen options."""
        return PlacementKnobs(self.balance_abs_threshold, self.balance_rel_threshold, self.min_match_chars,
                              self.min_match_ratio, self.sticky_margin_chars, self.pin_slots,
                              self.hold_min_gain_ratio)


class SharedStateOptions(BaseModel):
    """Replicas sharing limits, bindings and affinity through Redis (docs/scale-out.md).

    Leases last ``lease_ttl_s`` unless renewed (every ``renew_interval_s``, with the liveness
    key), so a replica killed outright frees its places within about ``lease_ttl_s`` plus
    one renewal. Admission waits for Redis at most ``admit_timeout_s``, then the replica
    goes degraded: ``ceil(request-max / live replicas)`` of its own.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str
    key_prefix: str = Field("llama-balancer:", min_length=1)
    replica_id: str | None = Field(None, min_length=1, max_length=200)  # default: host-pid-random
    lease_ttl_s: float = Field(4.0, gt=0)
    renew_interval_s: float = Field(1.0, gt=0)  # lease renewal and liveness refresh, in one call
    liveness_ttl_s: float = Field(3.0, gt=0)
    admit_timeout_s: float = Field(0.1, gt=0)
    # Places per server a replica may keep leased but unused, so a request far from the limit
    # is admitted without a round trip (core.replicas.reserve_target); 0: each asks Redis.
    lease_reserve: int = Field(64, ge=0)
    op_timeout_s: float = Field(1.0, gt=0)  # background calls: renewal, writes, loads
    connect_timeout_s: float = Field(1.0, gt=0)
    retry_interval_s: float = Field(1.0, gt=0)  # reconnect attempts while degraded
    assumed_replicas: int = Field(1, ge=1)  # live replicas assumed before Redis was ever reached
    sticky_entries: int = Field(10000, ge=1)  # bindings kept in Redis
    affinity_entries: int = Field(4096, ge=1)  # prompt records kept in Redis
    affinity_ttl_s: float = Field(900.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"expected redis://host:port/db (or rediss://), got {value!r}")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"expected a database number after the port, got {parts.path!r}")
        return value

    def model_post_init(self, context: Any, /) -> None:
        if self.lease_ttl_s < 2 * self.renew_interval_s:
            raise ValueError("lease_ttl_s must be at least twice renew_interval_s (a lease must survive a late renewal)")
        if self.liveness_ttl_s <= self.renew_interval_s:
            raise ValueError("liveness_ttl_s must be longer than renew_interval_s")


class BalancerOptions(BaseModel):
    """Tuning knobs; every interval is configurable so tests run in milliseconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    health_poll_interval_s: float = Field(1.0, gt=0)
    health_window: int = Field(5, ge=1)
    health_connect_timeout_s: float = Field(5.0, gt=0)
    health_read_timeout_s: float = Field(2.0, gt=0)
    models_cache_ttl_s: float = Field(10.0, gt=0)
    sticky_ttl_s: float = Field(180.0, gt=0)
    upstream_connect_timeout_s: float = Field(300.0, gt=0)
    upstream_idle_timeout_s: float | None = Field(None, gt=0)
    upstream_pool_size: int = Field(0, ge=0)  # 0 = unlimited connections per host
    client_idle_timeout_s: float = Field(75.0, gt=0)  # a client connection idle (or stuck mid-head) this long closes
    # A request head, then its body, must arrive within this long of its first byte (408):
    # the idle clock restarts at every byte, so it alone never closes a trickling client.
    client_header_timeout_s: float = Field(60.0, gt=0)
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    gpu_sample_interval_s: float = Field(1.0, gt=0)
    gpu_window_s: float = Field(5.0, gt=0)
    gpu_busy_threshold: float = Field(50.0, ge=0, le=100)
    access_log_window_s: float = Field(3600.0, gt=0)
    dashboard_sample_s: float = Field(2.0, ge=0.1, le=60)  # the dashboard's 15-minute series, one point per this
    access_log: str = Field("stdout", min_length=1)  # "stdout", "off" or a file path (rotated)
    access_log_max_bytes: int = Field(10 * 1024 * 1024, gt=0)
    access_log_backups: int = Field(5, ge=0)
    trusted_proxies: list[str] = Field(default_factory=list)  # IPs/CIDRs whose X-Forwarded-For counts
    max_header_bytes: int = Field(8190, ge=1024)  # longest request line or header field
    max_headers: int = Field(128, ge=8)
    drain_grace_s: float = Field(30.0, ge=0)
    config_poll_interval_s: float = Field(2.0, gt=0)
    # A model name no server of its route lists (while at least one list is known): routed
    # as before ("fallback", the old tool's way) or answered 404 model_not_found ("reject").
    unknown_model: Literal["fallback", "reject"] = "fallback"
    # Browser origins (scheme://host[:port]) allowed to call the API, or "*"; preflights are
    # then answered by the balancer. Empty: CORS is the backends' business, as before.
    cors_origins: list[str] = Field(default_factory=list)
    # A streamed chat or text completion from a llama-server that breaks after bytes reached
    # the client is continued on another server of its model ("on"), or ends with an SSE
    # error event as before ("off"); a request opts out with "X-Balancer-Resume: off".
    resume: Literal["on", "off"] = "on"
    routing: RoutingOptions = Field(default_factory=RoutingOptions)
    shared_state: SharedStateOptions | None = None  # absent: one process, state in memory

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry != "*":
                try:
                    ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"expected IP addresses or CIDR networks (or \"*\"), got {entry!r}") from None
        return value

    @field_validator("cors_origins")
    @classmethod
    def _valid_origins(cls, value: list[str]) -> list[str]:
        for entry in value:
            parts = urlsplit(entry)
            if entry != "*" and (parts.scheme not in ("http", "https") or not parts.hostname
                                 or parts.path or parts.query or parts.fragment):
                raise ValueError(f"expected origins like https://chat.example.com (scheme, host, optional port; "
                                 f"no path) or \"*\", got {entry!r}")
        return [entry.lower() for entry in value]


class AuthConfig(BaseModel):
    """Client and admin API keys; more can come from the environment (see runtime)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_keys: list[str] = Field(default_factory=list)
    admin_keys: list[str] = Field(default_factory=list)

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _no_empty_keys(cls, value: list[str]) -> list[str]:
        if any(not key.strip() for key in value):
            raise ValueError("keys must be non-empty strings")
        return value


class Config(BaseModel):
    """A validated config. ``routes`` holds the compiled patterns in file order."""

    model_config = ConfigDict(extra="ignore", frozen=True, arbitrary_types_allowed=True)

    servers: dict[str, ServerConfig] = Field(min_length=1)
    models: dict[str, list[str]] = Field(default_factory=dict)
    fallback_server: str | None = None
    rewrites: list[RewriteRule] = Field(default_factory=list)
    balancer: BalancerOptions = Field(default_factory=BalancerOptions)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    _routes: list[tuple[re.Pattern[str], list[str]]] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        for pattern, names in self.models.items():
            try:
                self._routes.append((re.compile(pattern), names))
            except re.error:
                pass  # refused by _cross_check with the pattern's path

    @property
    def fallback(self) -> str:
        """``fallback_server``, or the first server when absent."""
        return self.fallback_server or next(iter(self.servers))

    def candidates_for(self, model: str) -> list[str] | None:
        """The ordered server list of the first pattern that fullmatches, else None."""
        cache = self.candidates_cache
        try:
            return cache[model]
        except KeyError:
            pass
        found = None
        for pattern, names in self._routes:
            if pattern.fullmatch(model):
                found = names
                break
        if len(cache) < CANDIDATES_CACHED:  # model names come from clients: bounded
            cache[model] = found
        return found

    @cached_property
    def candidates_cache(self) -> dict[str, list[str] | None]:
        """``candidates_for``'s answers so far (this config is frozen, so they hold)."""
        return {}


def parse_config(raw: bytes | str) -> Config:
    """Parse and validate a config file's text, or raise ConfigError naming each bad path."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError([f"(file): not valid JSON: {exc}"]) from None
    return config_from_data(data)


def config_from_data(data: Any) -> Config:
    if not isinstance(data, dict):
        raise ConfigError([f"(root): expected a JSON object, got {_type_name(data)}"])
    problems: list[str] = []
    try:
        # by_name=False: a typo such as ``model_port`` must be refused as an unknown field,
        # not taken for ``model-port`` (populate_by_name is only for constructing in code).
        config = Config.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
    # References are checked on the file's data, so they are reported with the type errors.
    problems += [problem for problem in _cross_check(data) if problem not in problems]
    if problems:
        raise ConfigError(problems)
    return config


def unknown_top_level_keys(data: dict[str, Any]) -> list[str]:
    """Keys the balancer ignores (the old tool ignored them too); check-config warns."""
    return [key for key in data if key not in Config.model_fields]


def _cross_check(data: dict[str, Any]) -> list[str]:
    """Patterns that do not compile and names of servers that do not exist, read from the
    data as given (whatever else is wrong with it); values of the wrong type are the type
    check's to report."""
    problems: list[str] = []
    servers = data.get("servers")
    known = set(servers) if isinstance(servers, dict) else None
    models = data.get("models")
    for pattern, names in (models.items() if isinstance(models, dict) else ()):
        where = format_path(("models", pattern))
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(f"{where}: invalid regular expression: {exc}")
        if not isinstance(names, list):
            continue
        if not names:
            problems.append(f"{where}: expected at least one server name")
        for index, name in enumerate(names):
            if isinstance(name, str) and known is not None and name not in known:
                problems.append(f"{format_path(('models', pattern, index))}: unknown server {name!r}")
    fallback = data.get("fallback_server")
    if isinstance(fallback, str) and known is not None and fallback not in known:
        problems.append(f"fallback_server: unknown server {fallback!r}")
    return problems


def format_path(loc: tuple[Any, ...]) -> str:
    """``('servers', 'PC1', 'model-port')`` -> ``servers.PC1.model-port``; odd keys quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PATH_WORD.match(str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{orjson.dumps(str(part)).decode()}]"
    return out or "(root)"


_MESSAGES = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected a string",
    "dict_type": "expected a JSON object",
    "model_type": "expected a JSON object",
    "list_type": "expected a JSON array",
    "missing": "required field is missing",
    "extra_forbidden": "unknown field",
    "bool_type": "expected true or false",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "too_short": "must not be empty",
    "literal_error": "expected {expected}",
}


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # pydantic adds the chosen union member (``int``/``none``) to the path; drop it.
    loc = tuple(p for p in loc if p not in ("int", "float", "none", "str"))
    kind = err["type"]
    message = _MESSAGES.get(kind)
    if message is None:
        message = str(err["msg"]).removeprefix("Value error, ")
    elif kind not in ("missing", "extra_forbidden"):
        message = message.format(**err.get("ctx", {})) + f", got {_show(err.get('input'))}"
    return f"{format_path(loc)}: {message}"


def _show(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)
