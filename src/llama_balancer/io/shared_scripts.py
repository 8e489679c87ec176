"""The Redis side of shared state: key names and the Lua scripts (each one atomic call).

Leases are members of a sorted set per server, scored by their expiry in Redis's own clock
(``TIME``, so replicas' clocks never matter). Every script first drops expired members, so
a dead replica's places come back by themselves: no counter to leak (LiteLLM #20256).

Keys, under the configured prefix ``P``:

- ``P replicas``: live replicas, scored by liveness expiry; ``P replica:<id>``: its info,
  with a TTL (the liveness key).
- ``P leases:<server>``: lease id -> expiry.
- ``P sticky`` / ``P affinity`` / ``P health``: hashes of shared records, each with a
  ``:exp`` sorted set (field -> expiry) that bounds them in time and in number.
- Channels ``P released`` (a full server freed a place) and ``P state`` (record batches).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: leases. ARGV: limit, lease ttl ms, lease id. -> {granted 0|1, count after}
ADMIT = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[1]) then
  local ttl = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  return {1, n + 1}
end
return {0, n}
"""

# KEYS: leases. ARGV: limit, lease ttl ms, then lease ids. Grants as many of them as fit, in
# order (a replica's reserve). -> {granted, count after}
RESERVE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
local limit, ttl, granted = tonumber(ARGV[1]), tonumber(ARGV[2]), 0
for i = 3, #ARGV do
  if n + granted >= limit then break end
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  granted = granted + 1
end
if granted > 0 then redis.call('PEXPIRE', KEYS[1], ttl * 2) end
return {granted, n + granted}
"""

# KEYS: replicas, leases... ARGV: channel, sender, then per leases key: server, limit, n, ids.
# -> counts after. A server that was full tells the other replicas (their queues wake).
RELEASE = _NOW + """
local others = redis.call('ZCOUNT', KEYS[1], now, '+inf') > 1
local pos, counts, freed = 3, {}, {}
for k = 2, #KEYS do
  local name, limit, n = ARGV[pos], tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  pos = pos + 3
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now)
  local before, removed = redis.call('ZCARD', KEYS[k]), 0
  for i = pos, pos + n - 1 do removed = removed + redis.call('ZREM', KEYS[k], ARGV[i]) end
  pos = pos + n
  counts[#counts + 1] = before - removed
  if others and removed > 0 and before >= limit then freed[#freed + 1] = name .. '\\t' .. (before - removed) end
end
if #freed > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\\n' .. table.concat(freed, '\\n')) end
return counts
"""

# KEYS: replicas, replica key, leases... ARGV: id, liveness ttl ms, lease ttl ms, info, then
# per leases key: n, ids. Refreshes liveness, renews (or re-creates: a lease stands for a
# request still running, also after a Redis restart) our leases. -> {live, counts...}
TICK = _NOW + """
local live_ttl, lease_ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + live_ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], live_ttl * 10)
redis.call('SET', KEYS[2], ARGV[4], 'PX', live_ttl)
local out, pos = {redis.call('ZCARD', KEYS[1])}, 5
for k = 3, #KEYS do
  local n = tonumber(ARGV[pos])
  pos = pos + 1
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now)
  for i = pos, pos + n - 1 do redis.call('ZADD', KEYS[k], now + lease_ttl, ARGV[i]) end
  pos = pos + n
  if n > 0 then redis.call('PEXPIRE', KEYS[k], lease_ttl * 2) end
  out[#out + 1] = redis.call('ZCARD', KEYS[k])
end
return out
"""

# KEYS: replicas, then per table: hash, exp. ARGV: channel, message, then per table: max
# entries, n, then n x (field, value, ttl ms). Expired and surplus entries go, 256 a call.
PUT = _NOW + """
local pos = 3
for k = 2, #KEYS, 2 do
  local data, exp = KEYS[k], KEYS[k + 1]
  local most, n = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1])
  pos = pos + 2
  for i = 1, n do
    redis.call('HSET', data, ARGV[pos], ARGV[pos + 1])
    redis.call('ZADD', exp, now + tonumber(ARGV[pos + 2]), ARGV[pos])
    pos = pos + 3
  end
  local old = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 256)
  local excess = redis.call('ZCARD', exp) - #old - most
  if excess > 0 then
    for _, f in ipairs(redis.call('ZRANGE', exp, #old, #old + math.min(excess, 256) - 1)) do old[#old + 1] = f end
  end
  if #old > 0 then
    redis.call('HDEL', data, unpack(old))
    redis.call('ZREM', exp, unpack(old))
  end
end
if redis.call('ZCOUNT', KEYS[1], now, '+inf') > 1 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return 1
"""

# KEYS: hash, exp. ARGV: offset, count. -> live values, oldest first.
LOAD = _NOW + """
local fields = redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf', 'LIMIT', tonumber(ARGV[1]), tonumber(ARGV[2]))
if #fields == 0 then return {} end
local values, out = redis.call('HMGET', KEYS[1], unpack(fields)), {}
for i = 1, #fields do if values[i] then out[#out + 1] = values[i] end end
return out
"""

SCRIPTS = {"admit": ADMIT, "reserve": RESERVE, "release": RELEASE, "tick": TICK, "put": PUT, "load": LOAD}
SHA = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def replicas(self) -> str:
        return self.prefix + "replicas"

    def replica(self, replica_id: str) -> str:
        return f"{self.prefix}replica:{replica_id}"

    def leases(self, server: str) -> str:
        return f"{self.prefix}leases:{server}"

    def table(self, name: str) -> tuple[str, str]:
        return self.prefix + name, self.prefix + name + ":exp"

    @property
    def released(self) -> str:
        return self.prefix + "released"

    @property
    def state(self) -> str:
        return self.prefix + "state"
