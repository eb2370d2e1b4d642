"""TraceStore with hand-built OTLP spans: grouping, depth, bounds, request ids, ordering."""

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1 import trace_pb2

from clawmesh.services.metrics.traces import MAX_ITEMS, MAX_VALUE_CHARS, Order, TraceStore, is_trace_id
from tests.services.metrics.otlp_traces import T0_NS, export, kv, mesh_trace, span, span_hex, trace_hex


def names_and_depths(trace) -> list[tuple[str, str, int]]:
    return [(s.service, s.name.rsplit("/", 1)[-1], depth) for s, depth in trace.waterfall()]


def test_spans_of_two_services_in_separate_exports_make_one_trace():
    store = TraceStore()
    store.ingest(export({"ingest": [span(1, 1, "Submit", start_ms=0, end_ms=20)]}))
    store.ingest(export({"routing": [span(1, 2, "Route", parent=1, start_ms=2, end_ms=18),
                                     span(1, 3, "Generate", parent=2, start_ms=3, end_ms=10)]}))
    assert len(store) == 1
    trace = store.get(trace_hex(1))
    assert names_and_depths(trace) == [("ingest", "Submit", 0), ("routing", "Route", 1),
                                       ("routing", "Generate", 2)]
    summary = trace.summary()
    assert (summary.root_name, summary.root_service, summary.span_count) == ("Submit", "ingest", 3)
    assert summary.services == ("ingest", "routing")
    assert summary.duration_ms == pytest.approx(20.0)
    assert summary.start_ns == T0_NS
    assert store.spans_received == 3


def test_waterfall_is_depth_first_with_siblings_by_start_time():
    store = TraceStore()
    store.ingest(mesh_trace(1))
    assert names_and_depths(store.get(trace_hex(1))) == [
        ("ingest", "Submit", 0),
        ("ingest", "Route", 1),  # ingest's client span
        ("routing", "Route", 2),
        ("provider", "Generate", 3),  # starts before Append, its sibling
        ("memory", "Append", 3),
    ]


def test_a_span_whose_parent_was_not_received_is_a_root():
    store = TraceStore()
    store.ingest(export({"routing": [span(1, 2, "Route", parent=1, start_ms=2, end_ms=9),
                                     span(1, 3, "Generate", parent=2, start_ms=3, end_ms=5)]}))
    trace = store.get(trace_hex(1))
    assert names_and_depths(trace) == [("routing", "Route", 0), ("routing", "Generate", 1)]
    assert trace.summary().root_name == "Route"
    store.ingest(export({"ingest": [span(1, 1, "Submit", start_ms=0, end_ms=10)]}))  # arrives late
    assert [d for _, _, d in names_and_depths(trace)] == [0, 1, 2]
    assert trace.summary().root_name == "Submit"


def test_a_parent_cycle_still_shows_every_span_once():
    store = TraceStore()
    store.ingest(export({"x": [span(1, 1, "a", parent=2, start_ms=0),
                               span(1, 2, "b", parent=1, start_ms=1)]}))
    assert names_and_depths(store.get(trace_hex(1))) == [("x", "a", 0), ("x", "b", 1)]


def test_the_oldest_trace_is_evicted_at_max_traces():
    store = TraceStore(max_traces=3)
    for n in range(1, 6):
        store.ingest(mesh_trace(n, request_id=f"req-{n}"))
    assert len(store) == 3
    assert store.traces_evicted == 2
    assert [store.get(trace_hex(n)) is not None for n in range(1, 6)] == [False, False, True, True, True]
    assert store.by_request_id("req-1") is None and store.by_request_id("req-2") is None
    assert store.by_request_id("req-3").trace_id == trace_hex(3)
    # More spans of a trace already held take no new room.
    store.ingest(export({"late": [span(3, 99, "Late", parent=31, start_ms=1)]}))
    assert (len(store), store.traces_evicted) == (3, 2)
    assert store.get(trace_hex(3)).summary().span_count == 6


def test_spans_beyond_max_spans_per_trace_are_dropped_and_counted():
    store = TraceStore(max_spans_per_trace=4)
    store.ingest(export({"a": [span(1, n, f"s{n}", start_ms=n) for n in range(1, 7)]}))
    trace = store.get(trace_hex(1))
    assert [s.name for s, _ in trace.waterfall()] == ["s1", "s2", "s3", "s4"]
    assert (trace.dropped_spans, store.spans_dropped, store.spans_received) == (2, 2, 6)
    # An exporter's retry re-sends a span it already sent: it replaces the copy, even when full.
    store.ingest(export({"a": [span(1, 2, "s2-again", start_ms=2)]}))
    assert [s.name for s, _ in trace.waterfall()] == ["s1", "s2-again", "s3", "s4"]
    assert trace.dropped_spans == 2
    # Other traces have their own room.
    store.ingest(export({"a": [span(2, n, f"t{n}") for n in range(1, 5)]}))
    assert store.get(trace_hex(2)).summary().span_count == 4


def test_a_trace_is_found_by_request_id():
    store = TraceStore()
    store.ingest(mesh_trace(1, request_id="9f1c"))
    store.ingest(mesh_trace(2, request_id="other"))
    assert store.by_request_id("9f1c").trace_id == trace_hex(1)
    assert store.by_request_id("nope") is None
    assert store.get(trace_hex(1)).summary().request_id == "9f1c"
    assert store.get(trace_hex(1).upper()) is store.get(trace_hex(1))


def test_the_request_id_of_a_summary_is_the_shallowest_spans():
    store = TraceStore()
    store.ingest(export({"a": [span(1, 2, "child", parent=1, start_ms=1, request_id="inner"),
                               span(1, 1, "root", start_ms=2, request_id="outer")]}))
    assert store.get(trace_hex(1)).summary().request_id == "outer"
    assert store.by_request_id("inner").trace_id == trace_hex(1)


def recent_store() -> TraceStore:
    """Traces 1..4 starting 0, 100, 200, 300 ms in, lasting 50, 10, 80, 20 ms; 2 and 3 fail."""
    store = TraceStore()
    for n, (start, total, error) in enumerate(
            [(0, 50, False), (100, 10, True), (200, 80, True), (300, 20, False)], start=1):
        store.ingest(mesh_trace(n, start_ms=start, total_ms=total, error=error))
    return store


def test_list_orders_recent_slowest_and_errored():
    store = recent_store()

    def ids(order, **kw):
        return [int(s.trace_id, 16) for s in store.list(order, **kw)]

    assert ids(Order.RECENT) == [4, 3, 2, 1]
    assert ids(Order.SLOWEST) == [3, 1, 4, 2]
    assert ids(Order.ERRORED) == [3, 2]
    assert ids(Order.RECENT, limit=2) == [4, 3]
    assert ids(Order.SLOWEST, limit=1) == [3]
    assert [s.duration_ms for s in store.list(Order.SLOWEST)] == pytest.approx([80, 50, 20, 10])
    assert [s.error for s in store.list(Order.RECENT)] == [False, True, True, False]


def test_list_filters_by_service():
    store = recent_store()
    store.ingest(export({"solo": [span(9, 1, "Alone", start_ms=1000)]}))
    assert [s.trace_id for s in store.list(service="solo")] == [trace_hex(9)]
    assert len(store.list(service="memory")) == 4
    assert store.list(service="nobody") == []
    assert len(store.list(limit=1000)) == 5


def test_malformed_spans_are_ignored():
    store = TraceStore()
    good = span(1, 1, "ok")
    no_trace = trace_pb2.Span(span_id=good.span_id, name="no trace id")
    zero_trace = trace_pb2.Span(trace_id=bytes(16), span_id=good.span_id, name="zero")
    short_span = trace_pb2.Span(trace_id=good.trace_id, span_id=b"\x01", name="short")
    store.ingest(export({"a": [good, no_trace, zero_trace, short_span]}))
    assert (len(store), store.spans_received, store.spans_ignored) == (1, 4, 3)


def test_span_fields_attributes_and_events_are_kept_as_text():
    s = span(1, 2, "Generate", parent=1, start_ms=1, end_ms=3.5, error="backend down",
             attributes={"rpc.grpc.status_code": 14, "cached": True, "long": "x" * 5000})
    s.attributes.append(KeyValue(key="list", value=AnyValue(array_value=ArrayValue(
        values=[AnyValue(int_value=1), AnyValue(string_value="two")]))))
    s.attributes.append(KeyValue(key="map", value=AnyValue(kvlist_value=KeyValueList(
        values=[kv("k", "v")]))))
    s.events.add(time_unix_nano=T0_NS + 2_000_000, name="exception",
                 attributes=[kv("exception.message", "boom")])
    store = TraceStore()
    store.ingest(export({"provider": [s]}))
    [(got, depth)] = store.get(trace_hex(1)).waterfall()
    assert (got.span_id, got.parent_span_id, got.service, got.kind, depth) == (
        span_hex(2), span_hex(1), "provider", trace_pb2.Span.SPAN_KIND_SERVER, 0)
    assert got.duration_ms == pytest.approx(2.5)
    assert (got.error, got.status_message) == (True, "backend down")
    assert got.attributes["rpc.grpc.status_code"] == "14"
    assert got.attributes["cached"] == "true"
    assert got.attributes["list"] == '[1,"two"]'
    assert got.attributes["map"] == '{"k":"v"}'
    assert len(got.attributes["long"]) == MAX_VALUE_CHARS
    [event] = got.events
    assert (event.name, event.time_ns, event.attributes) == ("exception", T0_NS + 2_000_000,
                                                             {"exception.message": "boom"})


def test_attributes_and_events_per_span_are_bounded():
    s = span(1, 1, "busy", attributes={f"a{i}": i for i in range(MAX_ITEMS + 10)})
    for i in range(MAX_ITEMS + 5):
        s.events.add(time_unix_nano=T0_NS + i, name=f"e{i}")
    store = TraceStore()
    store.ingest(export({"a": [s]}))
    [(got, _)] = store.get(trace_hex(1)).waterfall()
    assert (len(got.attributes), len(got.events)) == (MAX_ITEMS, MAX_ITEMS)
    assert got.events[-1].name == f"e{MAX_ITEMS - 1}"


def test_trace_id_format():
    assert is_trace_id("4bf92f3577b34da6a3ce929d0e0e4736")
    assert is_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736")
    for bad in ("", "4bf92f", "0" * 32, "g" * 32, "4bf92f3577b34da6a3ce929d0e0e47360"):
        assert not is_trace_id(bad), bad


def test_bounds_must_be_positive():
    with pytest.raises(ValueError):
        TraceStore(max_traces=0)
