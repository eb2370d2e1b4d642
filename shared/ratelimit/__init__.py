"""Rate limits per descriptor (envoyproxy/ratelimit style), GCRA, in process or in Redis.

A *descriptor* is an ordered tuple of (key, value) pairs naming who or what is
limited: ``(("tenant", "acme"), ("sender", "u1"))`` or ``(("method", "Submit"),)``.
*Rules* say which *limits* apply to descriptors of a shape (a value of ``None``
matches any value, each value getting its own quota; the rule naming the most
values wins). A *limit* is a rate per unit of time plus a burst; every limit of the
matching rule must admit a request, and a refusal takes nothing from any of them.

    import time
    from clawmesh.shared.ratelimit import Limit, MemoryBackend, RateLimiter, RedisBackend, Rule

    rules = [
        Rule((("tenant", None), ("sender", None)), [
            Limit.per_second("sender-burst", 1, burst=10),   # 10 at once, then 1/s
            Limit.per_minute("sender-minute", 60),           # and 60 per minute
        ]),
        Rule((("method", "Submit"),), [Limit.per_second("submit", 500, burst=1000)]),
    ]
    limiter = RateLimiter(rules, RedisBackend.from_url("redis://redis:6379/0"),
                          fail_open=True)          # or MemoryBackend() for one process
    decision = await limiter.check((("tenant", "acme"), ("sender", "u1")), cost=1)
    if not decision.allowed:
        raise decision.error()     # RESOURCE_EXHAUSTED + RetryInfo(decision.retry_after_s)
    ...
    await limiter.aclose()

``check`` returns ``Decision(allowed, retry_after_s, remaining, limit_name, degraded)``:
refused → the limit with the longest wait and that wait, exactly (``inf`` when the
cost exceeds a burst); admitted → the limit with the least quota left and what is
left. A descriptor no rule matches is admitted with ``limit_name=""`` and
``remaining=-1``. ``limiter.stats`` counts checks, allowed, refused and
backend_errors (``checks == allowed + refused``; backend_errors are the checks
among them decided by the fail policy) and refusals per limit name.

Backends (same contract, same arithmetic, same decisions):

- ``MemoryBackend(clock=time.monotonic)``: a dict in this process; never fails.
- ``RedisBackend(client, clock=None, op_timeout_s=0.05, prefix="clawmesh:rl:")`` or
  ``RedisBackend.from_url(url, ...)``: one quota across processes and replicas. Time
  is Redis's ``TIME`` unless a shared ``clock`` (e.g. ``time.time``, or a fake one in
  tests) is given; the caller then passes its reading into the script.

Redis failures: every call is bounded by ``op_timeout_s`` (default 50 ms). A failed
call is decided by the policy: ``fail_open=True`` (default, as envoy's) admits with
``Decision(degraded=True)``; ``fail_open=False`` raises ``RateLimitUnavailable`` (an
``errors.Unavailable``: the server answers UNAVAILABLE, not RESOURCE_EXHAUSTED — the
client is not over quota, we just can't tell). For ``probe_interval_s`` (default 1 s)
after a failure the limiter answers by the policy without asking Redis, then one
check probes it; redis-py reconnects on that call. A lost and a regained backend are
each logged once.

Why GCRA in our own Lua script rather than a library (from their documentation):

- ``limits`` 5.8 has async Redis storage but only fixed, moving and sliding windows
  (no token bucket or GCRA); each limit is a separate ``hit``, so several limits on
  one descriptor are not atomic (``test`` then ``hit`` races between replicas, and
  hitting limit A before B refuses consumes A's quota); the wait is only available
  as a window reset time from a further ``get_window_stats`` round trip; time is the
  host's or Redis's clock, not injectable.
- ``throttled-py`` 3.5 has GCRA and token bucket on async Redis with a retry-after,
  but one quota per call (no atomic set of limits) and no injectable clock, so
  Redis tests could not be exact.
- ``aiolimiter`` is an in-process leaky bucket only.

GCRA needs one number per bucket (the theoretical arrival time), gives the exact
wait, and all limits of a descriptor fit in one short script: one EVALSHA per check,
atomic, refusals write nothing. The same arithmetic in Python (``memory.gcra``) backs
the in-process backend; time is integer microseconds in both, so they agree exactly.
No new dependency (redis-py is already one).
"""

from clawmesh.shared.ratelimit.limiter import RateLimiter, as_descriptor
from clawmesh.shared.ratelimit.memory import MemoryBackend, gcra
from clawmesh.shared.ratelimit.model import (
    UNKNOWN_REMAINING,
    Backend,
    BackendError,
    Clock,
    Decision,
    Descriptor,
    Limit,
    RateLimited,
    RateLimitStats,
    RateLimitUnavailable,
    Rule,
)
from clawmesh.shared.ratelimit.redis_backend import RedisBackend

__all__ = [
    "UNKNOWN_REMAINING",
    "Backend",
    "BackendError",
    "Clock",
    "Decision",
    "Descriptor",
    "Limit",
    "MemoryBackend",
    "RateLimitStats",
    "RateLimitUnavailable",
    "RateLimited",
    "RateLimiter",
    "RedisBackend",
    "Rule",
    "as_descriptor",
    "gcra",
]
