"""The Redis backend: one EVALSHA per check runs GCRA over every limit of a descriptor.

The script is the Lua twin of :func:`clawmesh.shared.ratelimit.memory.gcra` (same
integer-microsecond arithmetic, same choice of the named limit), so both backends
give identical decisions for identical inputs. It reads every bucket first and writes
only if every limit admits, so a refusal consumes nothing and two replicas never
both take the last unit (a script runs atomically).

Time: by default Redis's own ``TIME`` (one clock for every replica, immune to
skewed hosts); a ``clock`` given to the backend is read by the caller and passed
in instead (tests use a fake clock; it must be shared by all replicas, e.g.
``time.time``). Each key expires once its bucket is full again, plus ``min_ttl_s``
(expiry is in Redis's real time, so a caller-supplied clock keeps working).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from clawmesh.shared.ratelimit.memory import Verdict
from clawmesh.shared.ratelimit.model import BackendError, Clock, Decision, Limit, to_us

# KEYS[i]: bucket of limit i.  ARGV: now_us ("" = server time), cost, min_ttl_ms,
# then interval_us, burst per limit.  Returns {allowed, index (1-based), retry_us,
# remaining, now_us}.
GCRA_LUA = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local cost = tonumber(ARGV[2])
local min_ttl = tonumber(ARGV[3])
local new_tats = {}
local worst, worst_wait, worst_left = 0, -1, 0
local tightest, tightest_left = 1, -1
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 + 2 * i])
  local burst = tonumber(ARGV[3 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then
    local wait = allow_at - now
    if wait > worst_wait then
      local left = math.floor((now - (tat - burst * interval)) / interval)
      if left < 0 then left = 0 end
      worst, worst_wait, worst_left = i, wait, left
    end
  else
    local left = math.floor((now - allow_at) / interval)
    if tightest_left < 0 or left < tightest_left then
      tightest, tightest_left = i, left
    end
  end
  new_tats[i] = new_tat
end
if worst > 0 then
  return {0, worst, worst_wait, worst_left, now}
end
for i = 1, #KEYS do
  local ttl = math.ceil((new_tats[i] - now) / 1000) + min_ttl
  redis.call('SET', KEYS[i], string.format('%.0f', new_tats[i]), 'PX', ttl)
end
return {1, tightest, 0, tightest_left, now}
"""


class RedisBackend:
    """Buckets in Redis, shared by every process and replica using the same prefix.

    Every operation is bounded by ``op_timeout_s`` (cancelled after it; redis-py drops
    the connection and the next call opens a new one, so it reconnects by itself).
    Failures raise :class:`BackendError`; the limiter applies the fail policy.
    """

    def __init__(self, client: Redis, *, clock: Clock | None = None, op_timeout_s: float = 0.05,
                 prefix: str = "clawmesh:rl:", min_ttl_s: float = 60.0, owns_client: bool = False) -> None:
        if op_timeout_s <= 0:
            raise ValueError("op_timeout_s must be positive")
        self.client = client
        self.clock = clock
        self.op_timeout_s = op_timeout_s
        self.prefix = prefix
        self.min_ttl_ms = max(1, math.ceil(min_ttl_s * 1000))
        self._owns_client = owns_client
        self._script = client.register_script(GCRA_LUA)

    @classmethod
    def from_url(cls, url: str, *, op_timeout_s: float = 0.05, **kwargs) -> RedisBackend:
        """A backend with its own client: no command retries, connect and socket
        timeouts of ``op_timeout_s`` (the limiter, not redis-py, decides what a failure
        means). Closed by :meth:`aclose`."""
        client = Redis.from_url(url, socket_timeout=op_timeout_s, socket_connect_timeout=op_timeout_s,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
        return cls(client, op_timeout_s=op_timeout_s, owns_client=True, **kwargs)

    async def acquire(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        now = "" if self.clock is None else str(to_us(self.clock()))
        args: list[str | int] = [now, cost, self.min_ttl_ms]
        for limit in limits:
            args += [limit.interval_us, limit.burst]
        try:
            async with asyncio.timeout(self.op_timeout_s):
                reply = await self._script(keys=[self.prefix + k for k in keys], args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendError(f"redis: {type(exc).__name__}: {exc}") from exc
        allowed, index, retry_us, remaining, _now = (int(x) for x in reply)
        return Verdict(bool(allowed), index - 1, retry_us, remaining).decision(limits)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()
