from clawmesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_KIND_UNSPECIFIED: _ClassVar[FrameKind]
    FRAME_KIND_REQUEST: _ClassVar[FrameKind]
    FRAME_KIND_MESSAGE: _ClassVar[FrameKind]
    FRAME_KIND_END: _ClassVar[FrameKind]
    FRAME_KIND_CANCEL: _ClassVar[FrameKind]
FRAME_KIND_UNSPECIFIED: FrameKind
FRAME_KIND_REQUEST: FrameKind
FRAME_KIND_MESSAGE: FrameKind
FRAME_KIND_END: FrameKind
FRAME_KIND_CANCEL: FrameKind

class Frame(_message.Message):
    __slots__ = ("call_id", "kind", "method", "payload", "timeout_us", "metadata", "status")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_US_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    kind: FrameKind
    method: str
    payload: bytes
    timeout_us: int
    metadata: _containers.ScalarMap[str, str]
    status: _common_pb2.ErrorStatus
    def __init__(self, call_id: _Optional[int] = ..., kind: _Optional[_Union[FrameKind, str]] = ..., method: _Optional[str] = ..., payload: _Optional[bytes] = ..., timeout_us: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., status: _Optional[_Union[_common_pb2.ErrorStatus, _Mapping]] = ...) -> None: ...
