"""Thin ProviderService servicer: decode, call the core, encode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from clawmesh.common.v1 import common_pb2
from clawmesh.provider.v1 import provider_pb2, provider_pb2_grpc
from clawmesh.services.provider.backends import BackendError, BadRequest, RateLimited, Turn
from clawmesh.services.provider.core import Provider
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
    turns = []
    for i, m in enumerate(messages):
        role = ROLES.get(m.role)
        if role is None:
            raise InvalidArgument(f"messages[{i}].role", "must be a known role")
        turns.append(Turn(role, m.content))
    return turns


@contextmanager
def backend_errors() -> Iterator[None]:
    """Backend failures as the mesh's statuses (shared.errors holds the table)."""
    try:
        yield
    except RateLimited as exc:  # RESOURCE_EXHAUSTED + RetryInfo
        raise ResourceExhausted(exc.message, exc.retry_after_s) from exc
    except BadRequest as exc:  # INVALID_ARGUMENT: the request, not the backend
        raise InvalidArgument(exc.field or "messages", exc.message) from exc
    except BackendError as exc:  # UNAVAILABLE (+ RetryInfo when known): down, timed out, malformed
        raise Unavailable(exc.message, exc.retry_after_s) from exc


class ProviderServicer(provider_pb2_grpc.ProviderServiceServicer):
    """``clawmesh.provider.v1.ProviderService`` over the ``Provider`` core.

    An unknown backend or role, or no messages: INVALID_ARGUMENT naming the field.
    Backend failures: see ``backend_errors``.
    """

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    async def Generate(self, request, context):
        """One completion of ``messages`` on the requested (or default) backend."""
        turns = decode_turns(request.messages)
        with backend_errors():
            info, gen = await self.provider.generate(
                request.backend, request.model, turns, request.params.max_tokens,
            )
        return provider_pb2.GenerateResponse(
            message=common_pb2.ChatMessage(
                role=common_pb2.ROLE_ASSISTANT, content=gen.content,
                token_count=gen.completion_tokens,
            ),
            usage=common_pb2.Usage(
                prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                total_tokens=gen.prompt_tokens + gen.completion_tokens,
            ),
            finish_reason=FINISH[gen.finish_reason],
            backend=info.name,
            model=gen.model,
        )

    async def GenerateStream(self, request, context):
        """The completion in pieces; the last response is ``final`` with usage."""
        turns = decode_turns(request.messages)
        backend, chunks = self.provider.stream(
            request.backend, request.model, turns, request.params.max_tokens
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
        yield provider_pb2.GenerateStreamResponse(
            index=index, final=True, backend=backend.info.name, model=gen.model,
            finish_reason=FINISH[gen.finish_reason],
            usage=common_pb2.Usage(
                prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                total_tokens=gen.prompt_tokens + gen.completion_tokens,
            ),
        )

    async def ListBackends(self, request, context):
        """Every configured backend with its health and breaker state.

        In-flight calls and latency (``BackendInfo.stats``) have no field in BackendStatus yet.
        """
        return provider_pb2.ListBackendsResponse(
            backends=[
                provider_pb2.BackendStatus(
                    name=info.name, kind=info.kind, models=info.models, healthy=info.healthy,
                    breaker_state=provider_pb2.BREAKER_STATE_CLOSED, is_default=is_default,
                    consecutive_failures=info.stats.consecutive_faults,
                )
                for info, is_default in self.provider.list()
            ]
        )
