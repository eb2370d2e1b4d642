"""Spans for every call: SERVER around each handled call, CLIENT around each outbound one.

    server = [TracingServerInterceptor(), ContextInterceptor(), ...]      # outermost
    client = [*TracingClientInterceptor.if_enabled(), PropagationInterceptor(...), ...]

Both use the provider ``shared.tracing`` installed when they were made; with none (tracing
off) the server interceptor bypasses every method and ``client_chain`` leaves the client
one out (``TracingClientInterceptor.if_enabled()``): tracing off costs nothing per call.

Conventions are opentelemetry-instrumentation-grpc's: span name ``pkg.Service/Method``,
kind SERVER or CLIENT, ``rpc.system=grpc``, ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``; status ERROR on a client span for any non-OK code, on a server
span only for server faults (``shared.rpcstats.is_server_fault``: INVALID_ARGUMENT and
other refusals stay UNSET). Server spans also carry ``clawmesh.request_id`` and
``clawmesh.tenant`` from the call's metadata and ``clawmesh.transport``.

Trace context is W3C ``traceparent`` / ``tracestate`` in the call's metadata, one
mechanism with the rest of the propagated keys: the server span's parent is what the call
carried (nothing: a new trace); the client interceptor, outermost, adds its own span's
``traceparent`` to the call's metadata, which wins over the inbound one that
``PropagationInterceptor`` would otherwise pass on unchanged.

Only a recorded (sampled) span gets attributes and status; an unsampled one is an id
that travels on, so the next hop makes the same decision (parent-based sampling). With a
parent-based sampler (the default) a call whose parent is unsampled costs no SDK work: the
server makes the caller's context current as it came (log lines still carry the trace id),
the client sends the current context on; only a new trace asks the sampler.
"""

from __future__ import annotations

import asyncio

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from clawmesh.shared import metadata as md
from clawmesh.shared import tracing
from clawmesh.shared.errors import CODES, ClawMeshError
from clawmesh.shared.rpc.chain import HandlerInterceptor
from clawmesh.shared.rpc.client import Call, ClientInterceptor
from clawmesh.shared.rpc.exchange_server import ExchangeContext
from clawmesh.shared.rpc.filters import Filter, default_bypass
from clawmesh.shared.rpcstats import is_server_fault

W3C = TraceContextTextMapPropagator()
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_names: dict[str, tuple[str, dict[str, str]]] = {}


def describe(method: str) -> tuple[str, dict[str, str]]:
    """``/pkg.Svc/M`` -> span name ``pkg.Svc/M`` and its rpc.* attributes (made once per method)."""
    found = _names.get(method)
    if found is None:
        name = method.lstrip("/")
        service, _, rpc = name.rpartition("/")
        found = _names[method] = (name, {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc})
    return found


_last: tuple[object, trace.Tracer] | None = None  # (provider, its tracer): made once, not per message


def _tracer(provider=None) -> trace.Tracer | None:
    """The mesh's tracer from ``provider`` (default: the installed one); None: tracing is off."""
    global _last
    provider = provider if provider is not None else tracing.installed()
    if provider is None:
        return None
    if _last is None or _last[0] is not provider:
        _last = (provider, provider.get_tracer(tracing.SCOPE))
    return _last[1]


def _drops_unsampled_children(tracer: trace.Tracer | None) -> bool:
    """Whether the sampler drops every call whose parent (remote or local) is unsampled, asked once
    with made-up parents (parent-based samplers do; ``always_on`` or ``traceidratio`` do not)."""
    sampler = getattr(tracer, "sampler", None)
    if sampler is None:
        return False
    for remote in (True, False):
        for trace_id in (1, 2**128 - 1):
            parent = NonRecordingSpan(SpanContext(trace_id, 1, remote, TraceFlags(TraceFlags.DEFAULT)))
            context = trace.set_span_in_context(parent, otel_context.Context())
            if sampler.should_sample(context, trace_id, "probe").decision.is_sampled():
                return False
    return True


def _unsampled(traceparent: str | None) -> SpanContext | None:
    """The context of a well-formed version-00 ``traceparent`` whose sampled flag is off."""
    if traceparent is None or len(traceparent) != 55 or not traceparent.startswith("00-"):
        return None
    try:
        flags = int(traceparent[53:], 16)
        if flags & TraceFlags.SAMPLED:
            return None
        context = SpanContext(int(traceparent[3:35], 16), int(traceparent[36:52], 16), True,
                              TraceFlags(flags))
    except ValueError:
        return None
    return context if context.is_valid else None


def _traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _end(span: trace.Span, code: grpc.StatusCode, details: str, failed: bool) -> None:
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if failed:
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details}" if details else code.name))
    span.end()


def _leaving() -> bool:
    """Whether the running task is being cancelled (rather than its caller stopping to read)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class TracingServerInterceptor(HandlerInterceptor):
    """A SERVER span around each call, current while the handler runs."""

    def __init__(self, tracer_provider=None, bypass: Filter = default_bypass) -> None:
        self.tracer = _tracer(tracer_provider)
        self.follow_unsampled = _drops_unsampled_children(self.tracer)
        super().__init__(bypass if self.tracer is not None else (lambda method: True))

    def _start(self, method: str, context) -> trace.Span:
        exchange = isinstance(context, ExchangeContext)
        if exchange:
            headers = context.headers
            traceparent = headers.get(md.TRACEPARENT)
        else:
            pairs = context.invocation_metadata()
            traceparent = next((v for k, v in pairs if k == md.TRACEPARENT), None)
        if self.follow_unsampled and (unsampled := _unsampled(traceparent)) is not None:
            return NonRecordingSpan(unsampled)  # the caller's decision, at no SDK cost
        if not exchange:
            headers = md.to_dict(pairs)
        name, attributes = describe(method)
        # All attributes at the start: one copy into the span instead of one locked update each.
        attributes = {**attributes, tracing.TRANSPORT: "exchange" if exchange else "grpc"}
        if request_id := headers.get(md.REQUEST_ID):
            attributes[tracing.REQUEST_ID] = request_id
        if tenant := headers.get(md.TENANT):
            attributes[tracing.TENANT] = tenant
        parent = W3C.extract(headers)  # an empty context when the call carried none: a new trace
        return self.tracer.start_span(name, parent, SpanKind.SERVER, attributes)

    @staticmethod
    def _finish(span: trace.Span, context, exc: BaseException | None) -> None:
        code = context.code()
        if code is None:
            if exc is None:
                code = _OK
            elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else _CANCELLED
            else:  # the error interceptor maps exceptions; this is what gRPC would answer
                code = grpc.StatusCode.UNKNOWN
                if span.is_recording():
                    span.record_exception(exc)
        elif not isinstance(code, grpc.StatusCode):
            code = CODES.get(int(code), grpc.StatusCode.UNKNOWN)
        _end(span, code, context.details() or "", is_server_fault(code))

    async def unary(self, method, call_next, request, context):
        span = self._start(method, context)
        token = otel_context.attach(trace.set_span_in_context(span))
        error = None
        try:
            return await call_next(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            otel_context.detach(token)
            self._finish(span, context, error)

    async def stream(self, method, call_next, request, context):
        span = self._start(method, context)
        # Async generators run each step in the consumer's context (the call's own task),
        # so the span stays current for the whole stream: never detached across a yield.
        otel_context.attach(trace.set_span_in_context(span))
        error = None
        try:
            async for response in call_next(request, context):
                yield response
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._finish(span, context, error)


class TracingClientInterceptor(ClientInterceptor):
    """A CLIENT span around each outbound call; its ``traceparent`` goes with the call."""

    def __init__(self, tracer_provider=None) -> None:
        self.tracer = _tracer(tracer_provider)
        self.follow_unsampled = _drops_unsampled_children(self.tracer)

    @classmethod
    def if_enabled(cls, tracer_provider=None) -> list[TracingClientInterceptor]:
        """``[interceptor]`` with tracing on, ``[]`` with it off (a chain then pays nothing)."""
        interceptor = cls(tracer_provider)
        return [interceptor] if interceptor.tracer is not None else []

    def _start(self, call: Call) -> trace.Span | None:
        """The call's span, its traceparent added to the call; None: the trace is not recorded."""
        if self.follow_unsampled:
            current = trace.get_current_span().get_span_context()
            if current.is_valid and not current.trace_flags.sampled:
                call.metadata = (*call.metadata, (md.TRACEPARENT, _traceparent(current)))
                return None
        name, attributes = describe(call.method)
        span = self.tracer.start_span(name, None, SpanKind.CLIENT, attributes)  # child of the current span
        carrier: dict[str, str] = {}
        W3C.inject(carrier, trace.set_span_in_context(span))
        call.metadata = (*call.metadata, *carrier.items())
        return span

    @staticmethod
    def _finish(span: trace.Span, exc: BaseException | None) -> None:
        if exc is None:
            _end(span, _OK, "", False)
        elif isinstance(exc, grpc.aio.AioRpcError):
            _end(span, exc.code(), exc.details() or "", True)
        elif isinstance(exc, ClawMeshError):  # refused before the call: a spent deadline, an open breaker
            _end(span, exc.code, exc.message, True)
        elif isinstance(exc, asyncio.CancelledError):
            _end(span, _CANCELLED, "", True)
        else:
            if span.is_recording():
                span.record_exception(exc)
            _end(span, grpc.StatusCode.UNKNOWN, repr(exc), True)

    async def unary(self, call: Call, call_next):
        span = None if self.tracer is None else self._start(call)
        if span is None:
            return await call_next(call)
        try:
            response = await call_next(call)
        except BaseException as exc:
            self._finish(span, exc)
            raise
        self._finish(span, None)
        return response

    async def stream(self, call: Call, call_next):
        span = None if self.tracer is None else self._start(call)
        if span is None:
            async for response in call_next(call):
                yield response
            return
        try:
            async for response in call_next(call):
                yield response
        except GeneratorExit:
            # The caller stopped reading: done (it had what it wanted) unless it is being cancelled.
            self._finish(span, asyncio.CancelledError() if _leaving() else None)
            raise
        except BaseException as exc:
            self._finish(span, exc)
            raise
        self._finish(span, None)


def message_span(method: str):
    """A SERVER span of its own trace for one message of a long-lived stream, linked to the
    stream's span.

        with message_span("/clawmesh.ingest.v1.IngestService/Converse"):
            outcome = await ingest.submit(...)

    One trace per message, not one per stream (a Converse stream may carry thousands).
    Current inside the block; an exception ends it with the code it maps to, and goes on.
    A no-op context when tracing is off.
    """
    return _MessageSpan(method)


class _MessageSpan:
    __slots__ = ("method", "span", "token")

    def __init__(self, method: str) -> None:
        self.method = method
        self.span = self.token = None

    def __enter__(self) -> trace.Span:
        tracer = _tracer()
        if tracer is None:
            return trace.INVALID_SPAN
        name, attributes = describe(self.method)
        stream = trace.get_current_span().get_span_context()
        links = [trace.Link(stream)] if stream.is_valid else None
        self.span = tracer.start_span(name, otel_context.Context(), SpanKind.SERVER, attributes, links)
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.span is None:
            return
        otel_context.detach(self.token)
        if exc is None:
            _end(self.span, _OK, "", False)
        elif isinstance(exc, grpc.aio.AioRpcError):
            _end(self.span, exc.code(), exc.details() or "", is_server_fault(exc.code()))
        elif isinstance(exc, ClawMeshError):
            _end(self.span, exc.code, exc.message, is_server_fault(exc.code))
        else:
            code = _CANCELLED if isinstance(exc, asyncio.CancelledError) else grpc.StatusCode.UNKNOWN
            _end(self.span, code, "", code is not _CANCELLED)
