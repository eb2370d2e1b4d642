from clawmesh.common.v1 import common_pb2 as _common_pb2
from clawmesh.common.v1 import exchange_pb2 as _exchange_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteDecision(_message.Message):
    __slots__ = ("route_name", "backend", "model", "fallback_backends", "reason", "history_limit")
    ROUTE_NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_BACKENDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    route_name: str
    backend: str
    model: str
    fallback_backends: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    history_limit: int
    def __init__(self, route_name: _Optional[str] = ..., backend: _Optional[str] = ..., model: _Optional[str] = ..., fallback_backends: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., history_limit: _Optional[int] = ...) -> None: ...

class DispatchRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: _common_pb2.InboundMessage
    def __init__(self, message: _Optional[_Union[_common_pb2.InboundMessage, _Mapping]] = ...) -> None: ...

class DispatchResponse(_message.Message):
    __slots__ = ("reply", "route")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    reply: _common_pb2.Reply
    route: RouteDecision
    def __init__(self, reply: _Optional[_Union[_common_pb2.Reply, _Mapping]] = ..., route: _Optional[_Union[RouteDecision, _Mapping]] = ...) -> None: ...

class DispatchStreamRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: _common_pb2.InboundMessage
    def __init__(self, message: _Optional[_Union[_common_pb2.InboundMessage, _Mapping]] = ...) -> None: ...

class DispatchStreamResponse(_message.Message):
    __slots__ = ("chunk", "route")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    chunk: _common_pb2.ReplyChunk
    route: RouteDecision
    def __init__(self, chunk: _Optional[_Union[_common_pb2.ReplyChunk, _Mapping]] = ..., route: _Optional[_Union[RouteDecision, _Mapping]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: _common_pb2.InboundMessage
    def __init__(self, message: _Optional[_Union[_common_pb2.InboundMessage, _Mapping]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("route",)
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    route: RouteDecision
    def __init__(self, route: _Optional[_Union[RouteDecision, _Mapping]] = ...) -> None: ...

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
