import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetSnapshotRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class LatencySummary(_message.Message):
    __slots__ = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms")
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    def __init__(self, p50_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ..., max_ms: _Optional[float] = ...) -> None: ...

class MethodSnapshot(_message.Message):
    __slots__ = ("method", "request_count", "status_counts", "latency")
    class StatusCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATUS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    method: str
    request_count: int
    status_counts: _containers.ScalarMap[str, int]
    latency: LatencySummary
    def __init__(self, method: _Optional[str] = ..., request_count: _Optional[int] = ..., status_counts: _Optional[_Mapping[str, int]] = ..., latency: _Optional[_Union[LatencySummary, _Mapping]] = ...) -> None: ...

class InstanceSnapshot(_message.Message):
    __slots__ = ("instance_id", "last_report_time", "gauges")
    class GaugesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_TIME_FIELD_NUMBER: _ClassVar[int]
    GAUGES_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    last_report_time: _timestamp_pb2.Timestamp
    gauges: _containers.ScalarMap[str, float]
    def __init__(self, instance_id: _Optional[str] = ..., last_report_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., gauges: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ServiceSnapshot(_message.Message):
    __slots__ = ("service", "request_count", "error_count", "latency", "methods", "instances", "last_report_time", "instance_details")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_TIME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_DETAILS_FIELD_NUMBER: _ClassVar[int]
    service: str
    request_count: int
    error_count: int
    latency: LatencySummary
    methods: _containers.RepeatedCompositeFieldContainer[MethodSnapshot]
    instances: int
    last_report_time: _timestamp_pb2.Timestamp
    instance_details: _containers.RepeatedCompositeFieldContainer[InstanceSnapshot]
    def __init__(self, service: _Optional[str] = ..., request_count: _Optional[int] = ..., error_count: _Optional[int] = ..., latency: _Optional[_Union[LatencySummary, _Mapping]] = ..., methods: _Optional[_Iterable[_Union[MethodSnapshot, _Mapping]]] = ..., instances: _Optional[int] = ..., last_report_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., instance_details: _Optional[_Iterable[_Union[InstanceSnapshot, _Mapping]]] = ...) -> None: ...

class GetSnapshotResponse(_message.Message):
    __slots__ = ("services", "time")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceSnapshot]
    time: _timestamp_pb2.Timestamp
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceSnapshot, _Mapping]]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
