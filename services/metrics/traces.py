"""A bounded in-memory trace store: OTLP spans in, whole traces and trace summaries out.

    store = TraceStore(max_traces=2000, max_spans_per_trace=500)
    store.ingest(export_trace_request)             # an OTLP ExportTraceServiceRequest
    trace = store.get("4bf92f3577b34da6a3ce929d0e0e4736")    # or store.by_request_id("9f1c…")
    [(span, depth) for span, depth in trace.waterfall()]     # depth-first, children by start
    store.list(Order.SLOWEST, limit=20, service="routing")   # [TraceSummary, ...]

Spans are grouped by trace id, whichever service (``service.name`` resource attribute) and
export they came in. Memory is bounded: at most ``max_traces`` traces (the one received
first is evicted to make room), at most ``max_spans_per_trace`` spans each (more are
counted in ``Trace.dropped_spans``), and per span at most ``MAX_ITEMS`` attributes and
events, names and values of at most ``MAX_VALUE_CHARS``.
A span re-sent with the same span id (an exporter's retry) replaces the earlier copy.

The span attribute ``clawmesh.request_id`` (set by the services on their server spans)
indexes the trace, so ``by_request_id`` finds a trace by request id (the one that last
received a span carrying it, should two traces share one).
Plain data, no gRPC and no clock: the servicer turns it into ``clawmesh.metrics.v1``.
"""

from __future__ import annotations

import enum
import heapq
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field

from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from clawmesh.services.metrics.aggregator import resource_identity

REQUEST_ID_ATTRIBUTE = "clawmesh.request_id"
MAX_VALUE_CHARS = 1024
MAX_ITEMS = 128  # attributes, and events, kept per span (the OTel SDK's default limit)
STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_ZERO_TRACE_ID = "0" * 32


def is_trace_id(text: str) -> bool:
    """32 hex digits (either case), not all zero: a valid W3C trace id."""
    text = text.lower()
    return bool(_TRACE_ID.fullmatch(text)) and text != _ZERO_TRACE_ID


class Order(enum.IntEnum):
    """How ``TraceStore.list`` picks and orders traces (numbers as ``TraceOrder``)."""

    RECENT = 1  # newest start first
    SLOWEST = 2  # longest duration first
    ERRORED = 3  # only traces with an error span, newest first


@dataclass(frozen=True, slots=True)
class SpanEvent:
    time_ns: int
    name: str
    attributes: dict[str, str]


@dataclass(frozen=True, slots=True)
class SpanData:
    """One received span; ids as lower-case hex, times in unix nanoseconds."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    kind: int  # OTLP SpanKind
    start_ns: int
    end_ns: int
    status_code: int  # OTLP Status.code: 0 unset, 1 ok, 2 error
    status_message: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()

    @property
    def duration_ms(self) -> float:
        return max(self.end_ns - self.start_ns, 0) / 1e6

    @property
    def error(self) -> bool:
        return self.status_code == STATUS_ERROR


@dataclass(frozen=True, slots=True)
class TraceSummary:
    trace_id: str
    root_name: str
    root_service: str
    start_ns: int
    duration_ms: float
    span_count: int
    services: tuple[str, ...]  # sorted
    error: bool
    request_id: str  # of the shallowest span carrying clawmesh.request_id ("" if none)


class Trace:
    """The spans of one trace received so far (at most ``max_spans``)."""

    def __init__(self, trace_id: str, max_spans: int, seq: int = 0) -> None:
        self.trace_id = trace_id
        self.seq = seq  # the store's count of traces received before this one
        self.max_spans = max_spans
        self.spans: dict[str, SpanData] = {}  # by span id
        self.dropped_spans = 0
        self._summary: TraceSummary | None = None

    def add(self, span: SpanData) -> bool:
        """Keep ``span`` (replacing a copy with its id); False when the trace is full."""
        if span.span_id not in self.spans and len(self.spans) >= self.max_spans:
            self.dropped_spans += 1
            return False
        self.spans[span.span_id] = span
        self._summary = None
        return True

    def waterfall(self) -> list[tuple[SpanData, int]]:
        """(span, depth) depth first from the roots, siblings by start time.

        A root is a span without a parent or whose parent was not received; spans in a
        parent cycle (malformed input) are shown as roots too, so every span appears once.
        """
        children: dict[str, list[SpanData]] = {}
        roots = []
        for span in self.spans.values():
            if span.parent_span_id and span.parent_span_id in self.spans:
                children.setdefault(span.parent_span_id, []).append(span)
            else:
                roots.append(span)
        out: list[tuple[SpanData, int]] = []
        seen: set[str] = set()
        pending = sorted(self.spans.values(), key=_start_key)  # for spans in cycles
        for top in sorted(roots, key=_start_key) + pending:
            stack = [(top, 0)]
            while stack:
                span, depth = stack.pop()
                if span.span_id in seen:
                    continue
                seen.add(span.span_id)
                out.append((span, depth))
                kids = sorted(children.get(span.span_id, ()), key=_start_key, reverse=True)
                stack.extend((kid, depth + 1) for kid in kids)
        return out

    def summary(self) -> TraceSummary:
        if self._summary is None:
            self._summary = self._summarize()
        return self._summary

    def _summarize(self) -> TraceSummary:
        rows = self.waterfall()
        root = rows[0][0]
        start = min(span.start_ns for span, _ in rows)
        end = max(span.end_ns for span, _ in rows)
        request_id = next(
            (span.attributes[REQUEST_ID_ATTRIBUTE]
             for span, _ in sorted(rows, key=lambda row: (row[1], row[0].start_ns))
             if span.attributes.get(REQUEST_ID_ATTRIBUTE)),
            "",
        )
        return TraceSummary(
            trace_id=self.trace_id,
            root_name=root.name,
            root_service=root.service,
            start_ns=start,
            duration_ms=max(end - start, 0) / 1e6,
            span_count=len(rows),
            services=tuple(sorted({span.service for span, _ in rows})),
            error=any(span.error for span, _ in rows),
            request_id=request_id,
        )


def _start_key(span: SpanData) -> tuple[int, str]:
    return span.start_ns, span.span_id


class TraceStore:
    """Spans grouped by trace id, bounded by traces and spans per trace."""

    def __init__(self, max_traces: int = 2000, max_spans_per_trace: int = 500) -> None:
        if max_traces < 1 or max_spans_per_trace < 1:
            raise ValueError("max_traces and max_spans_per_trace must be at least 1")
        self.max_traces = max_traces
        self.max_spans_per_trace = max_spans_per_trace
        self._traces: OrderedDict[str, Trace] = OrderedDict()  # first received first
        self._by_request_id: dict[str, str] = {}  # request id -> trace id
        self.spans_received = 0
        self.spans_ignored = 0  # malformed: no valid trace or span id
        self.spans_dropped = 0  # over a trace's span limit
        self.traces_evicted = 0
        self._received = 0  # traces received so far, evicted ones too (a Trace's seq)

    def __len__(self) -> int:
        return len(self._traces)

    def ingest(self, request) -> None:
        """Fold in one OTLP ExportTraceServiceRequest."""
        for rs in request.resource_spans:
            service, _ = resource_identity(rs.resource)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self.spans_received += 1
                    self.add(span, service)

    def add(self, span: trace_pb2.Span, service: str) -> None:
        """Keep one OTLP span sent by ``service``."""
        if len(span.trace_id) != 16 or len(span.span_id) != 8 or not any(span.trace_id):
            self.spans_ignored += 1
            return
        data = span_data(span, service)
        trace = self._traces.get(data.trace_id)
        if trace is None:
            while len(self._traces) >= self.max_traces:
                self._evict()
            trace = Trace(data.trace_id, self.max_spans_per_trace, seq=self._received)
            self._traces[data.trace_id] = trace
            self._received += 1
        if not trace.add(data):
            self.spans_dropped += 1
            return
        request_id = data.attributes.get(REQUEST_ID_ATTRIBUTE)
        if request_id:
            self._by_request_id[request_id] = data.trace_id

    def _evict(self) -> None:
        trace_id, trace = self._traces.popitem(last=False)
        self.traces_evicted += 1
        for span in trace.spans.values():
            request_id = span.attributes.get(REQUEST_ID_ATTRIBUTE)
            if request_id and self._by_request_id.get(request_id) == trace_id:
                del self._by_request_id[request_id]

    def get(self, trace_id: str) -> Trace | None:
        """The trace with this id (hex, either case), or None."""
        return self._traces.get(trace_id.lower())

    def by_request_id(self, request_id: str) -> Trace | None:
        """The trace that last received a span whose ``clawmesh.request_id`` is ``request_id``."""
        trace_id = self._by_request_id.get(request_id)
        return None if trace_id is None else self._traces.get(trace_id)

    def list(self, order: Order = Order.RECENT, limit: int = 20, service: str = "") -> list[TraceSummary]:
        """Up to ``limit`` summaries in ``order``; ``service`` keeps traces it sent a span of.

        Ties (same start, or same duration) go to the trace received last.
        """
        traces = self._traces.values()
        if service:
            traces = (t for t in traces if service in t.summary().services)
        if order == Order.ERRORED:
            traces = (t for t in traces if t.summary().error)
        if order == Order.SLOWEST:
            top = heapq.nlargest(limit, traces, key=lambda t: (t.summary().duration_ms, t.seq))
        else:
            top = heapq.nlargest(limit, traces, key=lambda t: (t.summary().start_ns, t.seq))
        return [t.summary() for t in top]


def span_data(span: trace_pb2.Span, service: str) -> SpanData:
    """An OTLP span as plain data."""
    return SpanData(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        name=span.name[:MAX_VALUE_CHARS],
        service=service,
        kind=span.kind,
        start_ns=span.start_time_unix_nano,
        end_ns=max(span.end_time_unix_nano, span.start_time_unix_nano),
        status_code=span.status.code,
        status_message=span.status.message[:MAX_VALUE_CHARS],
        attributes=attributes(span.attributes),
        events=tuple(
            SpanEvent(event.time_unix_nano, event.name[:MAX_VALUE_CHARS], attributes(event.attributes))
            for event in span.events[:MAX_ITEMS]
        ),
    )


def attributes(kvs) -> dict[str, str]:
    """OTLP KeyValues as text: strings as they are, other values as JSON; bounded."""
    return {kv.key[:MAX_VALUE_CHARS]: value_text(kv.value)[:MAX_VALUE_CHARS] for kv in kvs[:MAX_ITEMS]}


def value_text(value: common_pb2.AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    return json.dumps(_plain(value), separators=(",", ":"))


def _plain(value: common_pb2.AnyValue):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return None if kind is None else getattr(value, kind)
