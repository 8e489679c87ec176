"""What a reload changed, for its log line: pure, two configs in, named changes out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .config import Config


@dataclass(frozen=True)
class ConfigChanges:
    servers_added: list[str] = field(default_factory=list)
    servers_removed: list[str] = field(default_factory=list)
    servers_changed: dict[str, list[str]] = field(default_factory=dict)  # name -> its changed fields
    patterns_added: list[str] = field(default_factory=list)
    patterns_removed: list[str] = field(default_factory=list)
    patterns_changed: list[str] = field(default_factory=list)  # same pattern, other servers
    patterns_reordered: bool = False
    options_changed: list[str] = field(default_factory=list)  # dotted paths: balancer.x, rewrites, auth
    fallback: tuple[str, str] | None = None

    @property
    def empty(self) -> bool:
        return not (self.servers_added or self.servers_removed or self.servers_changed or self.patterns_added
                    or self.patterns_removed or self.patterns_changed or self.patterns_reordered
                    or self.options_changed or self.fallback)

    def fields(self) -> dict[str, Any]:
        """The log line's fields (empty lists left out)."""
        out: dict[str, Any] = {
            "servers_added": self.servers_added, "servers_removed": self.servers_removed,
            "servers_changed": [f"{name}({','.join(keys)})" for name, keys in self.servers_changed.items()],
            "patterns_added": self.patterns_added, "patterns_removed": self.patterns_removed,
            "patterns_changed": self.patterns_changed, "options_changed": self.options_changed,
        }
        out = {key: value for key, value in out.items() if value}
        if self.patterns_reordered:
            out["patterns_reordered"] = True
        if self.fallback:
            out["fallback"] = f"{self.fallback[0]}->{self.fallback[1]}"
        return out


def config_changes(old: Config, new: Config) -> ConfigChanges:
    changed = {name: _changed_keys(old.servers[name], server) for name, server in new.servers.items()
               if name in old.servers and old.servers[name] != server}
    common_old = [p for p in old.models if p in new.models]
    common_new = [p for p in new.models if p in old.models]
    options = [f"balancer.{key}" for key in _changed_keys(old.balancer, new.balancer)]
    if old.rewrites != new.rewrites:
        options.append("rewrites")
    if old.auth != new.auth:
        options.append("auth")  # never the keys themselves
    return ConfigChanges(
        servers_added=[name for name in new.servers if name not in old.servers],
        servers_removed=[name for name in old.servers if name not in new.servers],
        servers_changed=changed,
        patterns_added=[p for p in new.models if p not in old.models],
        patterns_removed=[p for p in old.models if p not in new.models],
        patterns_changed=[p for p in common_new if old.models[p] != new.models[p]],
        patterns_reordered=common_old != common_new,
        options_changed=options,
        fallback=(old.fallback, new.fallback) if old.fallback != new.fallback else None,
    )


def _changed_keys(old: BaseModel, new: BaseModel, prefix: str = "") -> list[str]:
    """Fields that differ, as written in the file (aliases), nested models as dotted paths."""
    out = []
    for name, info in type(old).model_fields.items():
        a, b = getattr(old, name), getattr(new, name)
        if a == b:
            continue
        key = prefix + (info.alias or name)
        if isinstance(a, BaseModel) and isinstance(b, BaseModel):
            out += _changed_keys(a, b, key + ".")
        else:
            out.append(key)
    return out


# What a running balancer cannot change: each was handed, at start, to something that keeps
# it (aiohttp's client pool and server, the access log's file, the Redis link). Everything
# else in ``balancer`` is read per request or applied by the reload itself.
RESTART_ONLY = {
    "balancer.upstream_pool_size": "aiohttp's client pool keeps its size (the native front's pool takes it now)",
    "balancer.max_header_bytes": "connections handed to aiohttp keep the old limit (the native front applies it now)",
    "balancer.max_headers": "connections handed to aiohttp keep the old limit (the native front applies it now)",
    "balancer.client_idle_timeout_s": "connections handed to aiohttp keep the old keep-alive timeout "
                                      "(the native front applies it now)",
    "balancer.drain_grace_s": "aiohttp's shutdown timeout was set at start (the native front drains with the new one)",
    "balancer.access_log": "the access log's destination is opened at start",
    "balancer.access_log_max_bytes": "the access log's rotation is set at start",
    "balancer.access_log_backups": "the access log's rotation is set at start",
    "balancer.shared_state": "the link to the shared store is made at start",
}


def needs_restart(changes: ConfigChanges) -> list[str]:
    """The changed options a reload cannot apply, each as ``path (why)``; nested ones (a
    ``shared_state`` field) under the entry of their parent."""
    found: dict[str, str] = {}
    for path in changes.options_changed:
        for key, why in RESTART_ONLY.items():
            if path == key or path.startswith(key + "."):
                found.setdefault(key, f"{key} ({why})")
    return list(found.values())
