"""The edge gate: rate limit → dedup → admission, once per admitted message.

    gate = EdgeGate.from_policy(load_policy(settings.ingest.policy_file))
    outcome = await gate.unary(forward, "Submit", dedupable, produce)
    outcome.reply, outcome.replayed, outcome.quota_remaining
    await gate.close()

It runs in ingest's core, after validation (bad input never takes quota or a dedup
entry), for every shape of call: Submit, SubmitStream and each message of a
Converse stream alike. Order, and why:

1. **rate limits** first: a refused caller costs one quota check and nothing else;
2. **dedup** next: a copy of a finished message is replayed and a copy of one in
   flight waits for it, without taking an admission permit (a replay is cheap, and
   a waiting copy must not hold a slot the original needs);
3. **admission** last, around the work itself: priority queueing and shedding, and
   the latency its adaptive limit learns from.

Every policy has shadow mode (``enforce: false``): rate limits and dedup then count
what they would have refused or replayed (``shadow``) and let the message through.

Each decision is also noted on the message's span when it is sampled (``shared.tracing``):
``clawmesh.ratelimit`` allowed/refused + ``clawmesh.ratelimit.limit``, ``clawmesh.dedup``
new/replayed/coalesced, ``clawmesh.admission`` admitted/refused + ``clawmesh.admission.reason``
(``clawmesh.<policy>.enforced: false`` in shadow mode).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from opentelemetry import trace

from clawmesh.common.v1 import common_pb2
from clawmesh.shared import context as callctx
from clawmesh.shared import tracing
from clawmesh.shared.admission import AdmissionController, AdmissionRejected, AIMDLimit, GradientLimit
from clawmesh.shared.dedup import (
    Claim,
    Deduplicator,
    DedupUnavailable,
    InFlightTimeout,
    make_strategy,
)
from clawmesh.shared.dedup import MemoryBackend as DedupMemory
from clawmesh.shared.dedup import RedisBackend as DedupRedis
from clawmesh.shared.errors import DeadlineExceeded, Unavailable
from clawmesh.shared.policy import PER_S, EdgePolicy
from clawmesh.shared.ratelimit import Limit, RateLimiter, Rule
from clawmesh.shared.ratelimit import MemoryBackend as LimitMemory
from clawmesh.shared.ratelimit import RedisBackend as LimitRedis


@dataclass
class Outcome:
    """What the gate made of a message: its reply, whether replayed, quota left (-1: none)."""

    reply: common_pb2.Reply
    replayed: bool = False
    quota_remaining: int = -1


PRIORITY_NAMES = {v: k.removeprefix("PRIORITY_").lower() for k, v in common_pb2.Priority.items()}


def _note(attributes: dict) -> None:
    """Record a decision on the current span (ingest's server span): a no-op unless it is sampled."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)


def _note_claim(claim: Claim, enforced: bool) -> None:
    outcome = "new" if claim.owner else "coalesced" if claim.coalesced else "replayed"
    _note({tracing.DEDUP: outcome} if enforced else {tracing.DEDUP: outcome, tracing.DEDUP_ENFORCED: False})


class _NotedAdmission:
    """An admission that notes on ``span`` whether the message was admitted, or why not."""

    __slots__ = ("inner", "span")

    def __init__(self, inner, span) -> None:
        self.inner, self.span = inner, span

    async def __aenter__(self):
        try:
            permit = await self.inner.__aenter__()
        except AdmissionRejected as exc:
            self.span.set_attributes({tracing.ADMISSION: "refused",
                                      tracing.ADMISSION_REASON: exc.reason.value})
            raise
        self.span.set_attribute(tracing.ADMISSION, "admitted")
        return permit

    async def __aexit__(self, *exc_info):
        return await self.inner.__aexit__(*exc_info)


def _rules(policy: EdgePolicy) -> list[Rule]:
    return [
        Rule(tuple((k, None if v == "*" else v) for k, v in rule.match.items()),
             tuple(Limit(lim.name, lim.rate, PER_S[lim.per], lim.burst) for lim in rule.limits))
        for rule in policy.rate_limits.rules
    ]


def _limiter(policy: EdgePolicy, backend, clock) -> RateLimiter | None:
    rules = _rules(policy)
    if not rules:
        return None
    return RateLimiter(rules, backend, fail_open=policy.backend.on_error == "fail_open",
                       monotonic=clock)


def _admission(policy: EdgePolicy, clock) -> AdmissionController:
    a = policy.admission
    target_s = None if a.target_latency_ms is None else a.target_latency_ms / 1000.0
    bounds = {"initial": a.initial_limit, "min_limit": a.min_limit, "max_limit": a.max_limit}
    if a.limit == "aimd":
        limit = AIMDLimit(**bounds, target_latency_s=target_s)
    elif a.limit == "gradient":
        limit = GradientLimit(**bounds, target_latency_s=target_s, reference=a.reference,
                              tolerance=2.0 if a.reference == "min" else 1.5)
    else:
        limit = a.initial_limit
    return AdmissionController(
        limit, max_queue=a.max_queue, clock=clock, max_wait_services=a.max_wait_services,
        max_wait_s=None if a.max_wait_ms is None else a.max_wait_ms / 1000.0,
    )


class EdgeGate:
    """Rate limits, dedup and admission for one ingest process (state: memory or Redis)."""

    def __init__(self, policy: EdgePolicy, dedup: Deduplicator, limiter: RateLimiter | None,
                 admission: AdmissionController, limit_backend=None, clock=time.monotonic) -> None:
        self.policy = policy
        self.dedup = dedup
        self.limiter = limiter
        self.admission = admission
        self.limit_backend = limit_backend
        self.clock = clock
        self._shadow_in_flight = 0
        # One descriptor per distinct key set the rules use, keys in the rules' order.
        self.shapes = list(dict.fromkeys(tuple(r.match) for r in policy.rate_limits.rules))
        self.shadow: Counter[str] = Counter()  # what shadow mode let through

    @classmethod
    def from_policy(cls, policy: EdgePolicy, clock=time.monotonic) -> EdgeGate:
        b = policy.backend
        op_timeout_s = b.op_timeout_ms / 1000.0
        d = policy.dedup
        if b.kind == "redis":
            dedup_backend = DedupRedis(b.redis_url)
            limit_backend = LimitRedis.from_url(b.redis_url, op_timeout_s=op_timeout_s)
        else:
            dedup_backend = DedupMemory(clock=clock)
            limit_backend = LimitMemory(clock=clock)
        dedup = Deduplicator(
            dedup_backend, clock=clock, failure_mode=b.on_error, op_timeout_s=op_timeout_s,
            wait_timeout_s=d.wait_timeout_s,
            strategy=make_strategy(d.strategy, bloom_capacity=d.bloom_capacity,
                                   bloom_fp_rate=d.bloom_fp_rate),
        )
        return cls(policy, dedup, _limiter(policy, limit_backend, clock),
                   _admission(policy, clock), limit_backend, clock)

    def reloaded(self, policy: EdgePolicy) -> tuple[EdgeGate, list]:
        """A gate for ``policy`` that keeps the parts (and their state) it did not change.

        Returns the new gate and the replaced parts to close once calls in flight are done.
        A new backend section rebuilds everything.
        """
        if policy.backend != self.policy.backend:
            return EdgeGate.from_policy(policy, self.clock), [self]
        old: list = []
        dedup = self.dedup
        if policy.dedup != self.policy.dedup:
            fresh = EdgeGate.from_policy(policy, self.clock)
            dedup = fresh.dedup
            old.append(self.dedup)
        limiter = self.limiter
        if policy.rate_limits != self.policy.rate_limits:
            limiter = _limiter(policy, self.limit_backend, self.clock)  # same buckets store
        admission = self.admission
        if policy.admission != self.policy.admission:
            admission = _admission(policy, self.clock)  # calls in flight release the old one
        return EdgeGate(policy, dedup, limiter, admission, self.limit_backend, self.clock), old

    async def close(self) -> None:
        await self.dedup.aclose()
        if self.limit_backend is not None:
            await self.limit_backend.aclose()  # the limiters share it

    # -- the three steps ---------------------------------------------------------------

    async def _limit(self, message: common_pb2.InboundMessage, method: str) -> int:
        """Raise RateLimited when a limit refuses; else the least quota left (-1: no limit)."""
        if self.limiter is None:
            return -1
        left, tightest, refused = -1, "", ""
        values = {"tenant": message.tenant, "channel": message.channel, "sender": message.sender,
                  "priority": PRIORITY_NAMES[message.priority], "method": method}
        for keys in self.shapes:
            descriptor = tuple((k, values[k]) for k in keys)
            decision = await self.limiter.check(descriptor)
            if not decision.allowed:
                if self.policy.rate_limits.enforce:
                    _note({tracing.RATE_LIMIT: "refused", tracing.RATE_LIMIT_NAME: decision.limit_name})
                    raise decision.error(descriptor)
                self.shadow["rate_limited"] += 1
                refused = refused or decision.limit_name
            elif decision.remaining >= 0 and (left < 0 or decision.remaining < left):
                left, tightest = decision.remaining, decision.limit_name
        if refused:
            _note({tracing.RATE_LIMIT: "refused", tracing.RATE_LIMIT_NAME: refused,
                   tracing.RATE_LIMIT_ENFORCED: False})
        else:
            _note({tracing.RATE_LIMIT: "allowed", tracing.RATE_LIMIT_NAME: tightest})
        return left

    async def _claim(self, key: str, ttl_s: float):
        info = callctx.current()
        remaining = info.remaining() if info is not None else None
        wait = self.policy.dedup.wait_timeout_s if remaining is None else max(min(
            remaining, self.policy.dedup.wait_timeout_s), 0.0)
        shadow = not self.policy.dedup.enforce
        try:
            # Shadow mode never waits for an original: it only notes that it would have.
            return await self.dedup.claim(key, ttl_s, wait_timeout_s=0.0 if shadow else wait)
        except InFlightTimeout:
            if shadow:
                return Claim(owner=False, coalesced=True)
            raise DeadlineExceeded("a copy of this message is still being answered") from None
        except DedupUnavailable:
            raise Unavailable("deduplication store unavailable (policy fail_closed)") from None

    @contextlib.asynccontextmanager
    async def _shadow_admission(self):
        """Shadow mode: no queueing, but count what a full limit and queue would refuse."""
        if self._shadow_in_flight >= self.admission.limit + self.policy.admission.max_queue:
            self.shadow["admission_refused"] += 1
            _note({tracing.ADMISSION: "refused", tracing.ADMISSION_REASON: "queue_full",
                   tracing.ADMISSION_ENFORCED: False})
        self._shadow_in_flight += 1
        try:
            yield
        finally:
            self._shadow_in_flight -= 1

    def _admitted(self, message: common_pb2.InboundMessage):
        if not self.policy.admission.enforce:
            return self._shadow_admission()
        info = callctx.current()
        remaining = info.remaining() if info is not None else None
        deadline = None if remaining is None else self.admission.clock() + remaining
        admission = self.admission.admit(message.priority, deadline=deadline)
        span = trace.get_current_span()
        return _NotedAdmission(admission, span) if span.is_recording() else admission

    # -- per shape -------------------------------------------------------------------------

    def _dedup_key(self, message: common_pb2.InboundMessage,
                   dedupable: bool) -> tuple[str, float] | None:
        """The key and TTL copies of ``message`` share, or None: never a copy."""
        if dedupable:
            return message.idempotency_key, self.policy.dedup.ttl_s
        window = self.policy.dedup.content_window_s
        if not window:
            return None  # content alone never makes two messages the same, unless opted in
        basis = "\x1f".join((message.tenant, message.channel, message.session_id,
                              message.sender, message.content))
        return "content:" + hashlib.sha256(basis.encode()).hexdigest()[:32], window

    async def unary(self, message: common_pb2.InboundMessage, method: str, dedupable: bool,
                    produce: Callable[[], Awaitable[common_pb2.Reply]]) -> Outcome:
        """The reply to ``message``, whether it was replayed (or coalesced), quota left."""
        left = await self._limit(message, method)
        keyed = self._dedup_key(message, dedupable)
        if keyed is None:
            async with self._admitted(message):
                return Outcome(await produce(), False, left)
        key, ttl = keyed
        claim = await self._claim(key, ttl)
        _note_claim(claim, self.policy.dedup.enforce)
        if not claim.owner:
            if self.policy.dedup.enforce:
                return Outcome(common_pb2.Reply.FromString(claim.reply), True, left)
            self.shadow["replayed"] += 1
            async with self._admitted(message):
                return Outcome(await produce(), False, left)
        try:
            async with self._admitted(message):
                reply = await produce()
        except BaseException:
            await self.dedup.release(key)
            raise
        await self.dedup.complete(key, reply.SerializeToString())
        return Outcome(reply, False, left)

    async def stream(self, message: common_pb2.InboundMessage, method: str, dedupable: bool,
                     produce: Callable[[], AsyncIterator[common_pb2.ReplyChunk]]
                     ) -> AsyncIterator[tuple[common_pb2.ReplyChunk, bool]]:
        """Chunks of the reply, each with ``replayed``; a replay is one final chunk."""
        await self._limit(message, method)
        keyed = self._dedup_key(message, dedupable)
        claim = await self._claim(*keyed) if keyed is not None else None
        if claim is not None:
            _note_claim(claim, self.policy.dedup.enforce)
        if claim is not None and not claim.owner:
            if self.policy.dedup.enforce:
                reply = common_pb2.Reply.FromString(claim.reply)
                yield common_pb2.ReplyChunk(index=0, final=True, reply=reply), True
                return
            self.shadow["replayed"] += 1
            claim = None
        final = None
        try:
            async with self._admitted(message):
                async for chunk in produce():
                    if chunk.final:
                        final = chunk.reply
                    yield chunk, False
        finally:
            if claim is not None:
                if final is not None:
                    await self.dedup.complete(keyed[0], final.SerializeToString())
                else:
                    await self.dedup.release(keyed[0])

    def stats(self) -> dict[str, float]:
        """Counters for metrics and `clawmesh health --verbose`."""
        a = self.admission
        out = {"admission.available_permits": a.available_permits,
               "admission.waiting_count": a.waiting_count,
               "admission.load_percentage": a.load_percentage,
               "admission.rejected_count": a.rejected_total()}
        if self.limiter is not None:
            s = self.limiter.stats
            out.update({"ratelimit.checks": s.checks, "ratelimit.refused": s.refused,
                        "ratelimit.backend_errors": s.backend_errors})
        out.update({f"shadow.{k}": v for k, v in self.shadow.items()})
        return out  # the exporter leaves non-finite values out
