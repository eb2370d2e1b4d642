import datetime

from clawmesh.common.v1 import common_pb2 as _common_pb2
from clawmesh.common.v1 import exchange_pb2 as _exchange_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AppendRequest(_message.Message):
    __slots__ = ("session_id", "message", "idempotency_key")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    message: _common_pb2.ChatMessage
    idempotency_key: str
    def __init__(self, session_id: _Optional[str] = ..., message: _Optional[_Union[_common_pb2.ChatMessage, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("sequence", "duplicate")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    duplicate: bool
    def __init__(self, sequence: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class BatchAppendRequest(_message.Message):
    __slots__ = ("session_id", "messages", "idempotency_key")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    idempotency_key: str
    def __init__(self, session_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class BatchAppendResponse(_message.Message):
    __slots__ = ("sequences", "duplicate", "session_epoch")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    SESSION_EPOCH_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedScalarFieldContainer[int]
    duplicate: bool
    session_epoch: int
    def __init__(self, sequences: _Optional[_Iterable[int]] = ..., duplicate: _Optional[bool] = ..., session_epoch: _Optional[int] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("session_id", "limit", "token_budget", "after_sequence")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    limit: int
    token_budget: int
    after_sequence: int
    def __init__(self, session_id: _Optional[str] = ..., limit: _Optional[int] = ..., token_budget: _Optional[int] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("messages", "total_messages", "truncated", "last_sequence", "session_epoch")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_EPOCH_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    total_messages: int
    truncated: bool
    last_sequence: int
    session_epoch: int
    def __init__(self, messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., total_messages: _Optional[int] = ..., truncated: _Optional[bool] = ..., last_sequence: _Optional[int] = ..., session_epoch: _Optional[int] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ("deleted_messages",)
    DELETED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    deleted_messages: int
    def __init__(self, deleted_messages: _Optional[int] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "message_count", "token_count", "created_time", "updated_time")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATED_TIME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    message_count: int
    token_count: int
    created_time: _timestamp_pb2.Timestamp
    updated_time: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., message_count: _Optional[int] = ..., token_count: _Optional[int] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("sessions", "messages", "content_bytes", "tokens", "trimmed_messages", "expired_sessions", "expired_messages")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRIMMED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    sessions: int
    messages: int
    content_bytes: int
    tokens: int
    trimmed_messages: int
    expired_sessions: int
    expired_messages: int
    def __init__(self, sessions: _Optional[int] = ..., messages: _Optional[int] = ..., content_bytes: _Optional[int] = ..., tokens: _Optional[int] = ..., trimmed_messages: _Optional[int] = ..., expired_sessions: _Optional[int] = ..., expired_messages: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("session_id", "query", "limit")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    query: str
    limit: int
    def __init__(self, session_id: _Optional[str] = ..., query: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("sequence", "message")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    message: _common_pb2.ChatMessage
    def __init__(self, sequence: _Optional[int] = ..., message: _Optional[_Union[_common_pb2.ChatMessage, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ...) -> None: ...

class ExchangeRequest(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[_exchange_pb2.Frame]
    def __init__(self, frames: _Optional[_Iterable[_Union[_exchange_pb2.Frame, _Mapping]]] = ...) -> None: ...

class ExchangeResponse(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[_exchange_pb2.Frame]
    def __init__(self, frames: _Optional[_Iterable[_Union[_exchange_pb2.Frame, _Mapping]]] = ...) -> None: ...
