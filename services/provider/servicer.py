"""Thin ProviderService servicer: decode, call the core, encode.

    servicer = ProviderServicer(Provider.from_settings(settings.provider))
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(servicer, server)   # main.build does this

Requests carry the conversation (with its tool calls and tool answers) and the tools the
model may call; replies carry the model's tool calls (``GenerateResponse.message.tool_calls``,
the final ``GenerateStreamResponse.tool_calls``). A request's ``cache`` policy and session go to
the response cache (``cache.py``); a reply it served is ``cached`` (a stream's final response).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace

from clawmesh.common.v1 import common_pb2
from clawmesh.provider.v1 import provider_pb2, provider_pb2_grpc
from clawmesh.services.provider.backends import (
    BackendError,
    BadRequest,
    RateLimited,
    ToolCall,
    ToolSpec,
    Turn,
)
from clawmesh.services.provider.cache import CacheOptions
from clawmesh.services.provider.core import Provider
from clawmesh.services.provider.resilience import GuardedBackend
from clawmesh.shared import tracing
from clawmesh.shared.breaker import State
from clawmesh.shared.errors import InvalidArgument, ResourceExhausted, Unavailable

ROLES = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
    common_pb2.ROLE_TOOL: "tool",
}
FINISH = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "tool_calls": common_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": common_pb2.FINISH_REASON_CONTENT_FILTER,
}


def decode_turns(messages) -> list[Turn]:
    """Messages as turns. ``name`` is kept for tool answers only (a user's name is a channel
    handle, which OpenAI-compatible servers may reject as a ``name``)."""
    turns = []
    for i, m in enumerate(messages):
        role = ROLES.get(m.role)
        if role is None:
            raise InvalidArgument(f"messages[{i}].role", "must be a known role")
        for j, call in enumerate(m.tool_calls):
            if not call.name:
                raise InvalidArgument(f"messages[{i}].tool_calls[{j}].name", "must not be empty")
        calls = tuple(ToolCall(c.id, c.name, c.arguments_json or "{}") for c in m.tool_calls)
        turns.append(Turn(role, m.content, name=m.name if role == "tool" else "", tool_calls=calls,
                          tool_call_id=m.tool_call_id))
    return turns


def decode_tools(tools) -> list[ToolSpec]:
    """Tool definitions; the arguments' schema must be a JSON object (empty: ``{}``)."""
    specs = []
    for i, tool in enumerate(tools):
        if not tool.name:
            raise InvalidArgument(f"tools[{i}].name", "must not be empty")
        try:
            schema = json.loads(tool.parameters_json_schema or "{}")
        except ValueError:
            schema = None
        if not isinstance(schema, dict):
            raise InvalidArgument(f"tools[{i}].parameters_json_schema", "must be a JSON object")
        specs.append(ToolSpec(tool.name, tool.description, schema))
    return specs


def encode_calls(calls: list[ToolCall]) -> list[common_pb2.ToolCall]:
    return [common_pb2.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments) for c in calls]


def backend_status(backend: GuardedBackend, is_default: bool) -> provider_pb2.BackendStatus:
    """One backend's counters and its breaker's state (``reopen_time`` while open)."""
    info, stats = backend.info, backend.info.stats
    state = backend.breaker.state  # State numbers are BreakerState's
    status = provider_pb2.BackendStatus(
        name=info.name, kind=info.kind, models=info.models, healthy=info.healthy,
        breaker_state=int(state), is_default=is_default,
        consecutive_failures=stats.consecutive_faults, in_flight=stats.in_flight, waiting=stats.waiting,
        latency_ewma_ms=stats.latency_ms, calls=stats.calls, errors=stats.errors,
        max_concurrency=backend.limits.max_concurrency or 0, last_error=stats.last_error,
    )
    if state is State.OPEN:
        status.reopen_time.FromNanoseconds(time.time_ns() + int(backend.breaker.retry_after() * 1e9))
    return status


@contextmanager
def backend_errors() -> Iterator[None]:
    """Backend failures as the mesh's statuses (shared.errors holds the table).

    An open breaker's ``BreakerOpen`` is an ``errors.Unavailable`` already (+ RetryInfo)."""
    try:
        yield
    except RateLimited as exc:  # RESOURCE_EXHAUSTED + RetryInfo
        raise ResourceExhausted(exc.message, exc.retry_after_s) from exc
    except BadRequest as exc:  # INVALID_ARGUMENT: the request, not the backend
        raise InvalidArgument(exc.field or "messages", exc.message) from exc
    except BackendError as exc:  # UNAVAILABLE (+ RetryInfo when known): down, timed out, malformed
        raise Unavailable(exc.message, exc.retry_after_s) from exc


def _noted(backend: str, gen) -> None:
    """The backend, model and tokens of a generation, on the current (provider's server) span."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({tracing.BACKEND: backend, tracing.RESPONSE_MODEL: gen.model,
                             tracing.INPUT_TOKENS: gen.prompt_tokens,
                             tracing.OUTPUT_TOKENS: gen.completion_tokens})


class ProviderServicer(provider_pb2_grpc.ProviderServiceServicer):
    """``clawmesh.provider.v1.ProviderService`` over the ``Provider`` core.

    An unknown backend or role, no messages, or a bad tool: INVALID_ARGUMENT naming the field.
    Backend failures: see ``backend_errors``.
    """

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    async def Generate(self, request, context):
        """One completion of ``messages`` on the requested (or default) backend."""
        turns, tools = decode_turns(request.messages), decode_tools(request.tools)
        with backend_errors():
            info, gen = await self.provider.generate(
                request.backend, request.model, turns, request.params.max_tokens, tools,
                cache=CacheOptions.of(request),
            )
        _noted(info.name, gen)
        return provider_pb2.GenerateResponse(
            message=common_pb2.ChatMessage(
                role=common_pb2.ROLE_ASSISTANT, content=gen.content,
                token_count=gen.completion_tokens, tool_calls=encode_calls(gen.tool_calls),
            ),
            usage=common_pb2.Usage(
                prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                total_tokens=gen.prompt_tokens + gen.completion_tokens,
            ),
            finish_reason=FINISH[gen.finish_reason],
            backend=info.name,
            model=gen.model,
            cached=gen.cached,
        )

    async def GenerateStream(self, request, context):
        """The completion in pieces; the last response is ``final`` with usage and tool calls."""
        turns, tools = decode_turns(request.messages), decode_tools(request.tools)
        backend, chunks = self.provider.stream(
            request.backend, request.model, turns, request.params.max_tokens, tools,
            cache=CacheOptions.of(request),
        )
        model = request.model or backend.info.models[0]
        index = 0
        try:
            with backend_errors():
                async for delta in chunks:
                    yield provider_pb2.GenerateStreamResponse(
                        delta=delta, index=index, backend=backend.info.name, model=model
                    )
                    index += 1
        finally:
            await chunks.aclose()  # a cancelled call closes the backend's request now
        gen = chunks.result
        _noted(backend.info.name, gen)
        yield provider_pb2.GenerateStreamResponse(
            index=index, final=True, backend=backend.info.name, model=gen.model,
            finish_reason=FINISH[gen.finish_reason], tool_calls=encode_calls(gen.tool_calls),
            usage=common_pb2.Usage(
                prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                total_tokens=gen.prompt_tokens + gen.completion_tokens,
            ),
            cached=gen.cached,
        )

    async def ListBackends(self, request, context):
        """Every configured backend: health, counters, concurrency cap and breaker state;
        and the response cache's counters."""
        cache = self.provider.cache
        return provider_pb2.ListBackendsResponse(
            backends=[backend_status(b, is_default) for b, is_default in self.provider.list()],
            cache=provider_pb2.ResponseCacheStats(**cache.stats()) if cache is not None else None,
        )
