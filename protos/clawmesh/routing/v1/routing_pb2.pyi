from clawmesh.common.v1 import common_pb2 as _common_pb2
from clawmesh.common.v1 import exchange_pb2 as _exchange_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AffinityStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AFFINITY_STATUS_UNSPECIFIED: _ClassVar[AffinityStatus]
    AFFINITY_STATUS_OFF: _ClassVar[AffinityStatus]
    AFFINITY_STATUS_NEW: _ClassVar[AffinityStatus]
    AFFINITY_STATUS_HELD: _ClassVar[AffinityStatus]
    AFFINITY_STATUS_MOVED: _ClassVar[AffinityStatus]
    AFFINITY_STATUS_RETURNING: _ClassVar[AffinityStatus]

class AgentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATUS_UNSPECIFIED: _ClassVar[AgentStatus]
    AGENT_STATUS_COMPLETED: _ClassVar[AgentStatus]
    AGENT_STATUS_MAX_ITERATIONS: _ClassVar[AgentStatus]
AFFINITY_STATUS_UNSPECIFIED: AffinityStatus
AFFINITY_STATUS_OFF: AffinityStatus
AFFINITY_STATUS_NEW: AffinityStatus
AFFINITY_STATUS_HELD: AffinityStatus
AFFINITY_STATUS_MOVED: AffinityStatus
AFFINITY_STATUS_RETURNING: AffinityStatus
AGENT_STATUS_UNSPECIFIED: AgentStatus
AGENT_STATUS_COMPLETED: AgentStatus
AGENT_STATUS_MAX_ITERATIONS: AgentStatus

class RouteDecision(_message.Message):
    __slots__ = ("route_name", "backend", "model", "fallback_backends", "reason", "history_limit", "targets", "affinity", "agent", "balance")
    ROUTE_NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_BACKENDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    route_name: str
    backend: str
    model: str
    fallback_backends: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    history_limit: int
    targets: _containers.RepeatedCompositeFieldContainer[RouteTarget]
    affinity: AffinityInfo
    agent: str
    balance: str
    def __init__(self, route_name: _Optional[str] = ..., backend: _Optional[str] = ..., model: _Optional[str] = ..., fallback_backends: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., history_limit: _Optional[int] = ..., targets: _Optional[_Iterable[_Union[RouteTarget, _Mapping]]] = ..., affinity: _Optional[_Union[AffinityInfo, _Mapping]] = ..., agent: _Optional[str] = ..., balance: _Optional[str] = ...) -> None: ...

class RouteTarget(_message.Message):
    __slots__ = ("backend", "model", "token_budget", "system_prompt", "primary", "weight", "latency_ewma_ms", "available", "retry_in_s", "note")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_EWMA_MS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_IN_S_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    backend: str
    model: str
    token_budget: int
    system_prompt: str
    primary: bool
    weight: float
    latency_ewma_ms: float
    available: bool
    retry_in_s: float
    note: str
    def __init__(self, backend: _Optional[str] = ..., model: _Optional[str] = ..., token_budget: _Optional[int] = ..., system_prompt: _Optional[str] = ..., primary: _Optional[bool] = ..., weight: _Optional[float] = ..., latency_ewma_ms: _Optional[float] = ..., available: _Optional[bool] = ..., retry_in_s: _Optional[float] = ..., note: _Optional[str] = ...) -> None: ...

class AffinityInfo(_message.Message):
    __slots__ = ("status", "home", "current", "home_healthy_for_s", "return_after_s")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    HOME_HEALTHY_FOR_S_FIELD_NUMBER: _ClassVar[int]
    RETURN_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    status: AffinityStatus
    home: str
    current: str
    home_healthy_for_s: float
    return_after_s: float
    def __init__(self, status: _Optional[_Union[AffinityStatus, str]] = ..., home: _Optional[str] = ..., current: _Optional[str] = ..., home_healthy_for_s: _Optional[float] = ..., return_after_s: _Optional[float] = ...) -> None: ...

class Failover(_message.Message):
    __slots__ = ("from_backend", "from_model", "to_backend", "to_model", "code", "message", "after_chars", "continued")
    FROM_BACKEND_FIELD_NUMBER: _ClassVar[int]
    FROM_MODEL_FIELD_NUMBER: _ClassVar[int]
    TO_BACKEND_FIELD_NUMBER: _ClassVar[int]
    TO_MODEL_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AFTER_CHARS_FIELD_NUMBER: _ClassVar[int]
    CONTINUED_FIELD_NUMBER: _ClassVar[int]
    from_backend: str
    from_model: str
    to_backend: str
    to_model: str
    code: str
    message: str
    after_chars: int
    continued: bool
    def __init__(self, from_backend: _Optional[str] = ..., from_model: _Optional[str] = ..., to_backend: _Optional[str] = ..., to_model: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., after_chars: _Optional[int] = ..., continued: _Optional[bool] = ...) -> None: ...

class ToolInvocation(_message.Message):
    __slots__ = ("iteration", "id", "name", "arguments_json", "result", "error", "duration_ms")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    id: str
    name: str
    arguments_json: str
    result: str
    error: bool
    duration_ms: float
    def __init__(self, iteration: _Optional[int] = ..., id: _Optional[str] = ..., name: _Optional[str] = ..., arguments_json: _Optional[str] = ..., result: _Optional[str] = ..., error: _Optional[bool] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class AgentRun(_message.Message):
    __slots__ = ("agent", "status", "iterations", "tool_calls")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    agent: str
    status: AgentStatus
    iterations: int
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolInvocation]
    def __init__(self, agent: _Optional[str] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., iterations: _Optional[int] = ..., tool_calls: _Optional[_Iterable[_Union[ToolInvocation, _Mapping]]] = ...) -> None: ...

class DispatchRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: _common_pb2.InboundMessage
    def __init__(self, message: _Optional[_Union[_common_pb2.InboundMessage, _Mapping]] = ...) -> None: ...

class DispatchResponse(_message.Message):
    __slots__ = ("reply", "route", "failovers", "agent")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    FAILOVERS_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    reply: _common_pb2.Reply
    route: RouteDecision
    failovers: _containers.RepeatedCompositeFieldContainer[Failover]
    agent: AgentRun
    def __init__(self, reply: _Optional[_Union[_common_pb2.Reply, _Mapping]] = ..., route: _Optional[_Union[RouteDecision, _Mapping]] = ..., failovers: _Optional[_Iterable[_Union[Failover, _Mapping]]] = ..., agent: _Optional[_Union[AgentRun, _Mapping]] = ...) -> None: ...

class DispatchStreamRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: _common_pb2.InboundMessage
    def __init__(self, message: _Optional[_Union[_common_pb2.InboundMessage, _Mapping]] = ...) -> None: ...

class DispatchStreamResponse(_message.Message):
    __slots__ = ("chunk", "route", "failovers", "agent")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    FAILOVERS_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    chunk: _common_pb2.ReplyChunk
    route: RouteDecision
    failovers: _containers.RepeatedCompositeFieldContainer[Failover]
    agent: AgentRun
    def __init__(self, chunk: _Optional[_Union[_common_pb2.ReplyChunk, _Mapping]] = ..., route: _Optional[_Union[RouteDecision, _Mapping]] = ..., failovers: _Optional[_Iterable[_Union[Failover, _Mapping]]] = ..., agent: _Optional[_Union[AgentRun, _Mapping]] = ...) -> None: ...

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
