"""The routing brain: choose a route, assemble the context, call the provider along the route's
chain (running an agent's tools), store the turn.

    router = Router(memory_client, provider_client, settings)      # rules from routing.rules_file
    reply, outcome = await router.dispatch(inbound_message)         # outcome: plan, failovers, agent run
    async for part in router.dispatch_stream(inbound_message): ...  # StreamPart: chunk, failovers ...
    plan = router.decide(inbound_message)                           # Explain: changes nothing
    await router.reload()                                           # SIGHUP: re-read the rules file

Cores speak domain calls on typed clients (services/<svc>/client.py); the client chain adds
the inbound call's deadline and metadata to every call. The pieces: ``rules`` (which route),
``selection`` (which target first: balance, health, affinity), ``turn`` and ``prompt`` (what
each call is sent, the agent loop), ``failover`` (the chain), ``tools``.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2
from opentelemetry import trace

from clawmesh.common.v1 import common_pb2
from clawmesh.routing.v1 import routing_pb2
from clawmesh.services.routing.failover import Delta, Done, FailoverEngine, Switch
from clawmesh.services.routing.history import HistoryCache
from clawmesh.services.routing.rules import Route, Rules, RulesError, Target, check_rules
from clawmesh.services.routing.selection import AffinityPins, BackendHealth, Plan, make_plan
from clawmesh.services.routing.tools import ToolContext, ToolRegistry
from clawmesh.services.routing.turn import Turn
from clawmesh.shared import tracing
from clawmesh.shared.context import current
from clawmesh.shared.settings import MeshSettings

log = logging.getLogger(__name__)


def _noted(plan: Plan) -> Plan:
    """``plan``, recorded on the current (routing's server) span when it is sampled."""
    span = trace.get_current_span()
    if span.is_recording():
        first = plan.chain[0].target
        span.set_attributes({tracing.ROUTE: plan.route.name, tracing.ROUTE_BACKEND: first.backend,
                             tracing.ROUTE_MODEL: first.model})
    return plan


def now_ts() -> timestamp_pb2.Timestamp:
    # FromNanoseconds, not GetCurrentTime(): that one goes through datetime (~10x slower).
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def _add(total: common_pb2.Usage, usage: common_pb2.Usage) -> None:
    total.prompt_tokens += usage.prompt_tokens
    total.completion_tokens += usage.completion_tokens
    total.total_tokens += usage.total_tokens


@dataclass
class Outcome:
    """How a reply came about: the route's plan, the targets that failed first, the agent loop."""

    plan: Plan
    failovers: list[routing_pb2.Failover] = field(default_factory=list)
    agent: routing_pb2.AgentRun | None = None


@dataclass
class StreamPart:
    """One response of a streamed reply."""

    chunk: common_pb2.ReplyChunk
    plan: Plan | None = None  # on the first part only
    failovers: list[routing_pb2.Failover] = field(default_factory=list)  # switches since the last part
    agent: routing_pb2.AgentRun | None = None  # on the final part, with an agent


class Router:
    """Orchestrates one message. Clients are injected; nothing here knows ports.

    ``clock`` (monotonic: health, affinity) and ``wall`` (the ``current_time`` tool), ``rng``
    (weighted choice without affinity), ``rules`` and ``tools`` are injectable for tests.
    """

    def __init__(self, memory, provider, settings: MeshSettings, history: HistoryCache | None = None, *,
                 rules: Rules | None = None, tools: ToolRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.memory = memory
        self.provider = provider
        self.settings = settings
        cfg = settings.routing
        if history is None and cfg.history_cache_sessions:
            history = HistoryCache(cfg.history_cache_sessions, cfg.history_cache_ttl_s)
        self.history = history
        self.tools = tools or ToolRegistry.builtin()
        self.rules = rules if rules is not None else self.load_rules()
        self.wall = wall
        self.rng = rng or random.Random()
        self.health = BackendHealth(clock, self.rules.health.cooldown_s, self.rules.health.latency_alpha)
        self.pins = AffinityPins(cfg.affinity_sessions, cfg.affinity_ttl_s, clock)
        self.engine = FailoverEngine(provider, self.health, clock, settings.deadline_reserve_ms / 1000.0)

    def load_rules(self) -> Rules:
        """The rules file of the settings, checked against the configured backends and the tools."""
        return check_rules(self.settings, self.tools.names())

    async def reload(self) -> bool:
        """SIGHUP: re-read the rules file; a bad file keeps the running rules (logged). Health and
        affinity pins are kept (a pin whose target left its route is ignored)."""
        path = self.settings.routing.rules_file
        try:
            rules = self.load_rules()
        except RulesError as exc:
            log.error("routing rules reload rejected; keeping the running rules", extra={"error": str(exc)})
            return False
        self.rules = rules
        self.health.cooldown_s, self.health.alpha = rules.health.cooldown_s, rules.health.latency_alpha
        log.info("routing rules reloaded", extra={"file": str(path) if path else "(none)",
                                                  "routes": len(rules.routes)})
        return True

    @staticmethod
    def _tenant(message: common_pb2.InboundMessage) -> str:
        info = current()
        return message.tenant or (info.tenant if info is not None else "")

    def decide(self, message: common_pb2.InboundMessage) -> Plan:
        """The route and the order of its targets for ``message``; changes no state."""
        tenant = self._tenant(message)
        route, why = self.rules.select(message, tenant)
        return make_plan(route, (tenant, message.session_id), self.health, self.pins, self.rng, why)

    async def _history(self, message, limit: int) -> list[common_pb2.ChatMessage]:
        if not limit:
            return []
        if self.history is not None:
            return await self.history.load(self.memory, message.tenant, message.session_id, limit)
        return list((await self.memory.history(message.session_id, limit=limit)).messages)

    async def _turn(self, message, route: Route) -> Turn:
        user = common_pb2.ChatMessage(
            role=common_pb2.ROLE_USER, content=message.content, name=message.sender,
            created_time=message.sent_time if message.HasField("sent_time") else now_ts(),
        )
        history = await self._history(message, route.history_limit)
        ctx = ToolContext(self._tenant(message), message.session_id, self.memory, history, self.wall)
        return Turn(route, user, history, self.tools, ctx)

    async def _store(self, message, plan: Plan, turn: Turn, answered: Target) -> None:
        """The turn into memory; the session's pin follows the target that ``answered``."""
        # Ingest always keys the message; a direct caller of routing gets a fresh key.
        key = message.idempotency_key or uuid.uuid4().hex
        messages = turn.stored()
        response = await self.memory.append(message.session_id, messages, key)
        if self.history is not None:
            self.history.appended(message.tenant, message.session_id, messages, response,
                                  plan.route.history_limit)
        self.pins.record((self._tenant(message), message.session_id), plan, answered)

    def _reply(self, message, turn: Turn, backend, model, usage, finish) -> common_pb2.Reply:
        info = current()
        if turn.stopped:
            finish = common_pb2.FINISH_REASON_TOOL_CALLS
        return common_pb2.Reply(
            reply_id=uuid.uuid4().hex, session_id=message.session_id, content=turn.content,
            backend=backend, model=model, usage=usage, finish_reason=finish,
            created_time=now_ts(), request_id=info.request_id if info else "",
        )

    async def dispatch(self, message: common_pb2.InboundMessage) -> tuple[common_pb2.Reply, Outcome]:
        """The reply to ``message``, stored with it, and how it came about."""
        plan = _noted(self.decide(message))
        route = plan.route
        turn = await self._turn(message, route)
        outcome = Outcome(plan, agent=turn.run)
        usage = common_pb2.Usage()
        while True:
            answer, target, failovers = await self.engine.generate(
                plan, turn.request, route.attempt_timeout_s)
            outcome.failovers += failovers
            _add(usage, answer.usage)
            if not await turn.step(answer.message.content, answer.message.tool_calls):
                break
        await self._store(message, plan, turn, target)
        return self._reply(message, turn, answer.backend, answer.model, usage, answer.finish_reason), outcome

    async def dispatch_stream(self, message: common_pb2.InboundMessage) -> AsyncIterator[StreamPart]:
        """The reply in pieces; the first carries the plan, each the failovers since the one
        before (the mark of a switch), the last is final with the stored reply."""
        plan = _noted(self.decide(message))
        route = plan.route
        turn = await self._turn(message, route)
        usage = common_pb2.Usage()
        first, pending, index = True, [], 0

        def part(chunk: common_pb2.ReplyChunk, agent=None) -> StreamPart:
            nonlocal first, pending, index
            out = StreamPart(chunk, plan if first else None, pending, agent)
            first, pending, index = False, [], index + 1
            return out

        while True:
            done: Done | None = None
            async for event in self.engine.stream(plan, turn.request, route.first_token_timeout_s):
                if isinstance(event, Switch):
                    pending.append(event.failure.to_proto(event.to))
                elif isinstance(event, Delta):
                    yield part(common_pb2.ReplyChunk(index=index, delta=event.text))
                else:
                    done = event
            _add(usage, done.final.usage)
            if not await turn.step(done.text, done.final.tool_calls):
                break
        if turn.note:
            yield part(common_pb2.ReplyChunk(index=index, delta=turn.note))
        await self._store(message, plan, turn, done.target)
        final = done.final
        reply = self._reply(message, turn, final.backend, final.model, usage, final.finish_reason)
        yield part(common_pb2.ReplyChunk(index=index, final=True, reply=reply), turn.run)
