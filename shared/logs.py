"""Structured logs: one JSON object per line on stderr (or plain text for humans).

    configure_logging("ingest", "INFO", "json")
    log = logging.getLogger(__name__); log.info("started", extra={"port": 50051})

A JSON line written while a span is current (inside a handled call, with tracing on)
carries ``trace_id`` and ``span_id`` (hex, as trace backends show them), sampled or not,
so the logs of one message can be found from its trace and the other way round.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from opentelemetry import trace

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The OTLP exporter logs a stack trace per failed export while metrics is down.
    logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
    # The span batch processor logs a warning per span dropped from its full queue.
    logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)
