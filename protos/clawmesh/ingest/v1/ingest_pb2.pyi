from clawmesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: _common_pb2.InboundMessage
    def __init__(self, message: _Optional[_Union[_common_pb2.InboundMessage, _Mapping]] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("reply", "replayed")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    reply: _common_pb2.Reply
    replayed: bool
    def __init__(self, reply: _Optional[_Union[_common_pb2.Reply, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class SubmitStreamRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: _common_pb2.InboundMessage
    def __init__(self, message: _Optional[_Union[_common_pb2.InboundMessage, _Mapping]] = ...) -> None: ...

class SubmitStreamResponse(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: _common_pb2.ReplyChunk
    def __init__(self, chunk: _Optional[_Union[_common_pb2.ReplyChunk, _Mapping]] = ...) -> None: ...

class ConverseRequest(_message.Message):
    __slots__ = ("message", "correlation_id")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    message: _common_pb2.InboundMessage
    correlation_id: str
    def __init__(self, message: _Optional[_Union[_common_pb2.InboundMessage, _Mapping]] = ..., correlation_id: _Optional[str] = ...) -> None: ...

class ConverseResponse(_message.Message):
    __slots__ = ("correlation_id", "reply", "error", "replayed")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    reply: _common_pb2.Reply
    error: _common_pb2.ErrorStatus
    replayed: bool
    def __init__(self, correlation_id: _Optional[str] = ..., reply: _Optional[_Union[_common_pb2.Reply, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.ErrorStatus, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...
