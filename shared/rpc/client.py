"""The client side of every mesh hop: typed clients over a chain and a transport.

A core never touches stubs, metadata or timeouts; it calls a typed client of
the service it needs (``services/<svc>/client.py``)::

    memory = pool.client(MemoryClient, settings.memory.target())
    history = await memory.history(session_id, limit=20)

Each call becomes a ``Call`` that runs through the client chain (outermost
first, declared in ``shared.rpc.interceptors``: tracing, deadline and metadata
propagation, retry, circuit breaker) and then a
transport: ``UnaryTransport`` (one RPC per call) or ``ExchangeTransport``
(logical calls multiplexed on long-lived streams, ``shared.rpc.exchange_client``).
Both raise ``grpc.aio.AioRpcError`` on failure, so callers can't tell them apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import ClassVar, Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor


class Call:
    """One outbound logical call. Interceptors may change ``timeout`` and ``metadata``."""

    __slots__ = ("method", "request", "timeout", "metadata", "response_class")

    def __init__(self, method: str, request, response_class, timeout: float | None = None,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.method = method  # full name: "/clawmesh.memory.v1.MemoryService/GetHistory"
        self.request = request
        self.response_class = response_class
        self.timeout = timeout
        self.metadata = metadata


class ClientInterceptor:
    """Base: override ``unary`` and/or ``stream`` (an async generator); both pass through."""

    async def unary(self, call: Call, call_next):
        return await call_next(call)

    async def stream(self, call: Call, call_next) -> AsyncIterator:
        async for response in call_next(call):
            yield response


class Transport(Protocol):
    async def unary(self, call: Call): ...

    def stream(self, call: Call) -> AsyncIterator: ...

    async def close(self) -> None: ...


class UnaryTransport:
    """One gRPC call per logical call on a shared channel; multicallables built once."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._stream: dict[str, grpc.aio.UnaryStreamMultiCallable] = {}

    def _callable(self, table: dict, make, call: Call):
        fn = table.get(call.method)
        if fn is None:
            fn = table[call.method] = make(
                call.method, request_serializer=_serialize,
                response_deserializer=call.response_class.FromString,
            )
        return fn

    async def unary(self, call: Call):
        fn = self._callable(self._unary, self.channel.unary_unary, call)
        return await fn(call.request, timeout=call.timeout, metadata=call.metadata)

    async def stream(self, call: Call) -> AsyncIterator:
        fn = self._callable(self._stream, self.channel.unary_stream, call)
        rpc = fn(call.request, timeout=call.timeout, metadata=call.metadata)
        try:
            async for response in rpc:
                yield response
        finally:
            rpc.cancel()  # a client span/stream must never be left open

    async def close(self) -> None:
        """The channel belongs to the pool, which closes it."""


def _serialize(message) -> bytes:
    return message.SerializeToString()


def _compose(hooks: Sequence[Callable], terminal: Callable) -> Callable:
    """``hooks[0](call, next)`` around ... around ``terminal(call)``, built once."""
    fn = terminal
    for hook in reversed(hooks):
        fn = (lambda h, nxt: lambda call: h(call, nxt))(hook, fn)
    return fn


class ServiceClient:
    """Base of the typed clients: subclasses set ``SERVICE`` and add domain methods."""

    SERVICE: ClassVar[ServiceDescriptor]

    def __init__(self, transport: Transport, chain: Sequence[ClientInterceptor] = ()) -> None:
        self.transport = transport
        self._unary = _compose([ic.unary for ic in chain], transport.unary)
        self._stream = _compose([ic.stream for ic in chain], transport.stream)
        self._methods = {
            m.name: (f"/{self.SERVICE.full_name}/{m.name}",
                     message_factory.GetMessageClass(m.output_type))
            for m in self.SERVICE.methods
        }

    def call_for(self, name: str, request, headers: dict[str, str] | None = None) -> Call:
        """The ``Call`` for method ``name`` (what the chain and the transport receive)."""
        method, response_class = self._methods[name]
        return Call(method, request, response_class, metadata=tuple(headers.items()) if headers else ())

    async def unary(self, name: str, request, headers: dict[str, str] | None = None):
        """Call unary method ``name``; ``headers`` add to the propagated metadata."""
        return await self._unary(self.call_for(name, request, headers))

    def stream(self, name: str, request, headers: dict[str, str] | None = None) -> AsyncIterator:
        """Call server-streaming method ``name``; iterate the responses."""
        return self._stream(self.call_for(name, request, headers))
