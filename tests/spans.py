"""Spans in memory for tests: a provider installed in ``shared.tracing`` while the block runs.

    with recorded_spans() as exporter:      # build servers and chains inside the block
        ...
        exporter.get_finished_spans()

Every trace is recorded (parent-based always-on). Spans end when a call's reply has been
sent, so a test may look a moment after its call returned (``wait_for_spans``).
"""

from __future__ import annotations

import asyncio
import contextlib

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from clawmesh.shared import tracing


@contextlib.contextmanager
def recorded_spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


async def wait_for_spans(exporter: InMemorySpanExporter, count: int, predicate=None) -> list:
    """The finished spans (those ``predicate`` accepts) once there are ``count``, or after 1 s."""
    for _ in range(200):
        found = [s for s in exporter.get_finished_spans() if predicate is None or predicate(s)]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.005)  # the server ends its span just after the reply went out
    return found
