"""gRPC adapter of the memory store: validate and decode, call the store, encode.

The tenant is the ``x-clawmesh-tenant`` metadata of the call; when absent
(memory called directly, not through ingest) it falls back to the same default
tenant ingest uses. Limits (id length, content size, tokens, batch, page and search sizes) come
from ``MemorySettings``. Bad input raises ``InvalidArgument`` naming every
offending field; the server's error interceptor turns it into INVALID_ARGUMENT
+ BadRequest.

    servicer = MemoryServiceServicer(await open_store(settings.memory), settings.memory, "default")
"""

from __future__ import annotations

from dataclasses import asdict

from google.protobuf import timestamp_pb2

from clawmesh.common.v1 import common_pb2
from clawmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from clawmesh.services.memory.records import Message, SessionInfo, ToolCall, words
from clawmesh.services.memory.store import MemoryStore, token_violations
from clawmesh.shared.context import current
from clawmesh.shared.errors import FieldViolation, InvalidArgument
from clawmesh.shared.settings import MemorySettings

KNOWN_ROLES = frozenset(v for v in common_pb2.Role.values() if v != common_pb2.ROLE_UNSPECIFIED)


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
    """``clawmesh.memory.v1.MemoryService`` over a ``MemoryStore``.

    ``limits`` are the service's settings; ``default_tenant`` is the tenant of a
    call without tenant metadata (``settings.ingest.default_tenant``).
    """

    def __init__(self, store: MemoryStore, limits: MemorySettings, default_tenant: str) -> None:
        self._store = store
        self._limits = limits
        self._default_tenant = default_tenant

    def _tenant(self) -> str:
        info = current()
        return (info.tenant if info is not None else "") or self._default_tenant

    def _check_id(self, value: str, name: str, required: bool) -> list[FieldViolation]:
        if required and not value:
            return [FieldViolation(name, "must not be empty")]
        if len(value) > self._limits.max_id_chars:
            return [FieldViolation(name, f"must be at most {self._limits.max_id_chars} characters")]
        return []

    def _check_message(self, message: common_pb2.ChatMessage, name: str) -> list[FieldViolation]:
        problems = []
        if message.role not in KNOWN_ROLES:
            problems.append(FieldViolation(f"{name}.role", "must be a known role, not UNSPECIFIED"))
        limit = self._limits.max_content_bytes
        if len(message.content.encode()) > limit:
            problems.append(FieldViolation(f"{name}.content", f"must be at most {limit} bytes"))
        else:
            problems += token_violations([decode_message(message)], self._store.limits.max_tokens, [name])
        return problems

    async def Append(self, request, context):
        """Append one message to a session; returns its sequence.

        A repeat of an ``idempotency_key`` already used in the same session stores
        nothing and returns the first sequence with ``duplicate``. INVALID_ARGUMENT
        for a missing/too long session id, a too long key, a missing message, an
        unknown role, too large content, or more tokens than a whole session keeps
        (``max_tokens_per_session``).
        """
        problems = self._check_id(request.session_id, "session_id", required=True)
        problems += self._check_id(request.idempotency_key, "idempotency_key", required=False)
        if request.HasField("message"):
            problems += self._check_message(request.message, "message")
        else:
            problems.append(FieldViolation("message", "required"))
        _raise_if(problems)
        result = await self._store.append(
            self._tenant(),
            request.session_id,
            [decode_message(request.message)],
            request.idempotency_key,
        )
        return memory_pb2.AppendResponse(sequence=result.sequences[0], duplicate=result.duplicate)

    async def BatchAppend(self, request, context):
        """Append messages atomically (all or none); returns their sequences and the epoch.

        Idempotency as in ``Append`` (a duplicate returns the first append's
        sequences and the session's epoch). INVALID_ARGUMENT as in ``Append``, and
        when the batch is empty or holds more than ``max_batch_messages``.
        """
        problems = self._check_id(request.session_id, "session_id", required=True)
        problems += self._check_id(request.idempotency_key, "idempotency_key", required=False)
        most = self._limits.max_batch_messages
        if not 1 <= len(request.messages) <= most:
            problems.append(FieldViolation("messages", f"must hold 1 to {most} messages"))
        for i, message in enumerate(request.messages):
            problems += self._check_message(message, f"messages[{i}]")
        _raise_if(problems)
        result = await self._store.append(
            self._tenant(),
            request.session_id,
            [decode_message(m) for m in request.messages],
            request.idempotency_key,
        )
        return memory_pb2.BatchAppendResponse(
            sequences=result.sequences,
            duplicate=result.duplicate,
            session_epoch=result.session_epoch,
        )

    async def GetHistory(self, request, context):
        """The session's newest messages, oldest first, within limit and token budget.

        With ``after_sequence`` only messages after it (what a cached history
        lacks); ``last_sequence`` and ``session_epoch`` let the caller check its
        cache. An unknown session is an empty history, not an error.
        INVALID_ARGUMENT for a missing or too long session id.
        """
        _raise_if(self._check_id(request.session_id, "session_id", required=True))
        history = await self._store.history(
            self._tenant(),
            request.session_id,
            request.limit,
            request.token_budget,
            request.after_sequence,
        )
        return memory_pb2.GetHistoryResponse(
            messages=[encode_message(m) for m in history.messages],
            total_messages=history.total_messages,
            truncated=history.truncated,
            last_sequence=history.last_sequence,
            session_epoch=history.session_epoch,
        )

    async def DeleteSession(self, request, context):
        """Delete a session, its messages and idempotency keys; returns the message count.

        A session created again afterwards has a new epoch and starts at sequence 1.
        NOT_FOUND when there is no such session; INVALID_ARGUMENT for a missing or
        too long session id.
        """
        _raise_if(self._check_id(request.session_id, "session_id", required=True))
        deleted = await self._store.delete_session(self._tenant(), request.session_id)
        return memory_pb2.DeleteSessionResponse(deleted_messages=deleted)

    async def ListSessions(self, request, context):
        """A page of the tenant's sessions by id (``default_page_size`` when 0).

        INVALID_ARGUMENT when ``page_size`` exceeds ``max_page_size`` or the page
        token is malformed.
        """
        if request.page_size > self._limits.max_page_size:
            raise InvalidArgument("page_size", f"must be at most {self._limits.max_page_size}")
        size = request.page_size or min(self._limits.default_page_size, self._limits.max_page_size)
        page = await self._store.list_sessions(self._tenant(), size, request.page_token)
        return memory_pb2.ListSessionsResponse(
            sessions=[_encode_session(s) for s in page.sessions],
            next_page_token=page.next_page_token,
        )

    async def Stats(self, request, context):
        """Totals over the tenant's live sessions (sessions, messages, content bytes, tokens)
        and what its limits and expiry removed so far. Raises nothing of its own.
        """
        stats = await self._store.stats(self._tenant())
        return memory_pb2.StatsResponse(**asdict(stats))

    async def Search(self, request, context):
        """The session's messages holding every word of the query, newest first.

        An unknown session has no matches. INVALID_ARGUMENT for a missing or too
        long session id, an empty or too long query (or one without a word), and a
        limit above ``max_search_results``.
        """
        problems = self._check_id(request.session_id, "session_id", required=True)
        most = self._limits.max_query_chars
        if len(request.query) > most:
            problems.append(FieldViolation("query", f"must be at most {most} characters"))
        elif not words(request.query):
            problems.append(FieldViolation("query", "must contain at least one word (letters or digits)"))
        if request.limit > self._limits.max_search_results:
            problems.append(FieldViolation("limit", f"must be at most {self._limits.max_search_results}"))
        _raise_if(problems)
        limit = request.limit or min(self._limits.default_search_results, self._limits.max_search_results)
        found = await self._store.search(self._tenant(), request.session_id, request.query, limit)
        return memory_pb2.SearchResponse(
            hits=[memory_pb2.SearchHit(sequence=m.sequence, message=encode_message(m)) for m in found]
        )
