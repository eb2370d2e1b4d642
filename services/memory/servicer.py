"""gRPC adapter of the memory store: validate and decode, call the store, encode.

The tenant is the ``x-clawmesh-tenant`` metadata of the call ("default" when
absent). Bad input raises ``InvalidArgument`` naming every offending field;
the server's error interceptor turns it into INVALID_ARGUMENT + BadRequest.
"""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from clawmesh.common.v1 import common_pb2
from clawmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from clawmesh.services.memory.records import Message, SessionInfo, ToolCall
from clawmesh.services.memory.store import MAX_PAGE_SIZE, MemoryStore
from clawmesh.shared.context import current
from clawmesh.shared.errors import FieldViolation, InvalidArgument

DEFAULT_TENANT = "default"
MAX_ID_CHARS = 256
MAX_CONTENT_BYTES = 256 * 1024
MAX_BATCH_MESSAGES = 100
KNOWN_ROLES = frozenset(v for v in common_pb2.Role.values() if v != common_pb2.ROLE_UNSPECIFIED)


def _tenant() -> str:
    info = current()
    return (info.tenant if info is not None else "") or DEFAULT_TENANT


def _check_id(value: str, name: str, required: bool) -> list[FieldViolation]:
    if required and not value:
        return [FieldViolation(name, "must not be empty")]
    if len(value) > MAX_ID_CHARS:
        return [FieldViolation(name, f"must be at most {MAX_ID_CHARS} characters")]
    return []


def _check_message(message: common_pb2.ChatMessage, name: str) -> list[FieldViolation]:
    problems = []
    if message.role not in KNOWN_ROLES:
        problems.append(FieldViolation(f"{name}.role", "must be a known role, not UNSPECIFIED"))
    if len(message.content.encode()) > MAX_CONTENT_BYTES:
        problems.append(
            FieldViolation(f"{name}.content", f"must be at most {MAX_CONTENT_BYTES} bytes")
        )
    return problems


def _raise_if(problems: list[FieldViolation]) -> None:
    if problems:
        raise InvalidArgument(problems)


def decode_message(message: common_pb2.ChatMessage) -> Message:
    return Message(
        role=message.role,
        content=message.content,
        name=message.name,
        created_ns=message.created_time.ToNanoseconds() if message.HasField("created_time") else 0,
        token_count=message.token_count,
        tool_calls=tuple(ToolCall(c.id, c.name, c.arguments_json) for c in message.tool_calls),
        tool_call_id=message.tool_call_id,
    )


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def encode_message(message: Message) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(
        role=message.role,
        content=message.content,
        name=message.name,
        created_time=_timestamp(message.created_ns),
        token_count=message.token_count,
        tool_calls=[
            common_pb2.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments_json)
            for c in message.tool_calls
        ],
        tool_call_id=message.tool_call_id,
    )


def _encode_session(info: SessionInfo) -> memory_pb2.SessionInfo:
    return memory_pb2.SessionInfo(
        session_id=info.session_id,
        message_count=info.message_count,
        token_count=info.token_count,
        created_time=_timestamp(info.created_ns),
        updated_time=_timestamp(info.updated_ns),
    )


class MemoryServiceServicer(memory_pb2_grpc.MemoryServiceServicer):
    """``clawmesh.memory.v1.MemoryService`` over a ``MemoryStore``."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    async def Append(self, request, context):
        problems = _check_id(request.session_id, "session_id", required=True)
        problems += _check_id(request.idempotency_key, "idempotency_key", required=False)
        if request.HasField("message"):
            problems += _check_message(request.message, "message")
        else:
            problems.append(FieldViolation("message", "required"))
        _raise_if(problems)
        result = await self._store.append(
            _tenant(),
            request.session_id,
            [decode_message(request.message)],
            request.idempotency_key,
        )
        return memory_pb2.AppendResponse(sequence=result.sequences[0], duplicate=result.duplicate)

    async def BatchAppend(self, request, context):
        problems = _check_id(request.session_id, "session_id", required=True)
        problems += _check_id(request.idempotency_key, "idempotency_key", required=False)
        if not 1 <= len(request.messages) <= MAX_BATCH_MESSAGES:
            problems.append(
                FieldViolation("messages", f"must hold 1 to {MAX_BATCH_MESSAGES} messages")
            )
        for i, message in enumerate(request.messages):
            problems += _check_message(message, f"messages[{i}]")
        _raise_if(problems)
        result = await self._store.append(
            _tenant(),
            request.session_id,
            [decode_message(m) for m in request.messages],
            request.idempotency_key,
        )
        return memory_pb2.BatchAppendResponse(
            sequences=result.sequences, duplicate=result.duplicate
        )

    async def GetHistory(self, request, context):
        _raise_if(_check_id(request.session_id, "session_id", required=True))
        history = await self._store.history(
            _tenant(), request.session_id, request.limit, request.token_budget
        )
        return memory_pb2.GetHistoryResponse(
            messages=[encode_message(m) for m in history.messages],
            total_messages=history.total_messages,
            truncated=history.truncated,
        )

    async def DeleteSession(self, request, context):
        _raise_if(_check_id(request.session_id, "session_id", required=True))
        deleted = await self._store.delete_session(_tenant(), request.session_id)
        return memory_pb2.DeleteSessionResponse(deleted_messages=deleted)

    async def ListSessions(self, request, context):
        if request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be at most {MAX_PAGE_SIZE}")
        page = await self._store.list_sessions(_tenant(), request.page_size, request.page_token)
        return memory_pb2.ListSessionsResponse(
            sessions=[_encode_session(s) for s in page.sessions],
            next_page_token=page.next_page_token,
        )

    async def Stats(self, request, context):
        stats = await self._store.stats(_tenant())
        return memory_pb2.StatsResponse(
            sessions=stats.sessions,
            messages=stats.messages,
            content_bytes=stats.content_bytes,
            tokens=stats.tokens,
        )
