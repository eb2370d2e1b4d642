"""Terminal views of traces (what `clawmesh trace` prints), drawn with rich.

    console = trace_console()         # the terminal's width; a fixed one when not a terminal
    console.print(waterfall(get_trace_response, console.width))     # one row per span
    console.print(trace_list(list_traces_response, console.width))  # one row per trace

Works on the ``clawmesh.metrics.v1`` responses only; span names and attributes are shown
as plain text (never read as rich markup), errors in red. Imported by the launcher, not
by the metrics service.
"""

from __future__ import annotations

import sys
from datetime import datetime

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from clawmesh.metrics.v1 import metrics_pb2
from clawmesh.shared.errors import code_name

NO_TTY_WIDTH = 132
MIN_BAR_WIDTH = 24
ERROR_STYLE = "bold red"
_GRPC_CODE = "rpc.grpc.status_code"


def trace_console(file=None, width: int | None = None) -> Console:
    """A console on ``file`` (stdout): the terminal's width, else ``NO_TTY_WIDTH``."""
    file = sys.stdout if file is None else file
    if width is None and not (hasattr(file, "isatty") and file.isatty()):
        width = NO_TTY_WIDTH
    return Console(file=file, width=width, highlight=False, soft_wrap=False)


def bar(offset_ms: float, duration_ms: float, total_ms: float, width: int, fill: str = "█") -> str:
    """A ``width``-character timeline with the span's share of the trace filled in.

    The span starts at ``offset_ms`` into a trace of ``total_ms``; any span gets at
    least one character, and none runs past the end.
    """
    if total_ms <= 0:
        return fill.ljust(width)
    start = min(int(offset_ms / total_ms * width), width - 1)
    length = max(1, int(duration_ms / total_ms * width + 0.5))
    return (" " * start + fill * min(length, width - start)).ljust(width)


def status_text(span: metrics_pb2.Span) -> Text:
    """The span's outcome: ERROR (with its gRPC code and message), a gRPC code that is
    not OK (a refusal such as NOT_FOUND, not an error of the server), OK, or "-" when unset."""
    grpc_code = span.attributes.get(_GRPC_CODE, "")
    code = code_name(int(grpc_code)) if grpc_code.isdigit() else grpc_code
    if span.status_code == metrics_pb2.SPAN_STATUS_CODE_ERROR:
        detail = ": ".join(x for x in (code if code != "OK" else "", span.status_message) if x)
        return Text("ERROR" + (f" {detail}" if detail else ""), style=ERROR_STYLE)
    if code and code != "OK":
        return Text(code, style="yellow")
    if span.status_code == metrics_pb2.SPAN_STATUS_CODE_OK or code == "OK":
        return Text("OK", style="green")
    return Text("-", style="dim")


def _ns(ts) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def waterfall(response: metrics_pb2.GetTraceResponse, width: int = NO_TTY_WIDTH, fill: str = "█") -> Group:
    """Two header lines and one row per span: indented name, service, start offset and
    duration (ms), a timeline bar drawn with ``fill`` and the status, fitted to ``width``."""
    spans = list(response.spans)
    start = min((_ns(s.start_time) for s in spans), default=0)
    end = max((_ns(s.end_time) for s in spans), default=0)
    total_ms = (end - start) / 1e6
    services = sorted({s.service for s in spans})
    request_id = next((s.attributes["clawmesh.request_id"] for s in spans
                       if s.attributes.get("clawmesh.request_id")), "")
    header = Text(f"trace {response.trace_id}", style="bold")
    if request_id:
        header.append(f"  request {request_id}")
    header.append(f"\n{len(spans)} span(s), {total_ms:.1f} ms, services: {', '.join(services)}")
    if response.dropped_spans:
        header.append(f" ({response.dropped_spans} span(s) over the limit not kept)", style="yellow")

    rows = []
    for span in spans:
        offset_ms = (_ns(span.start_time) - start) / 1e6
        rows.append((Text("  " * span.depth + short_name(span.name)), Text(span.service), f"{offset_ms:.1f}",
                     f"{span.duration_ms:.1f}", offset_ms, span.duration_ms, status_text(span),
                     span.status_code == metrics_pb2.SPAN_STATUS_CODE_ERROR))
    fixed = [_natural("service", (r[1].plain for r in rows)),
             _natural("start ms", (r[2] for r in rows)),
             _natural("dur ms", (r[3] for r in rows))]
    name_w = min(_natural("span", (r[0].plain for r in rows)), 48)
    status_w = min(_natural("status", (r[6].plain for r in rows)), 32)
    spare = width - sum(fixed) - 2 * 5  # two spaces between the six columns
    short = MIN_BAR_WIDTH - (spare - name_w - status_w)  # too narrow: status, then name give way
    if short > 0:
        status_w -= (cut := min(short, max(status_w - 16, 0)))
        name_w -= min(short - cut, max(name_w - 16, 0))
    bar_w = max(spare - name_w - status_w, 8)

    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("span", no_wrap=True, overflow="ellipsis", width=name_w)
    table.add_column("service", no_wrap=True, width=fixed[0])
    table.add_column("start ms", justify="right", no_wrap=True, width=fixed[1])
    table.add_column("dur ms", justify="right", no_wrap=True, width=fixed[2])
    table.add_column("timeline", no_wrap=True, width=bar_w)
    table.add_column("status", no_wrap=True, overflow="ellipsis", width=status_w)
    for name, service, offset, duration, offset_ms, duration_ms, status, error in rows:
        timeline = Text(bar(offset_ms, duration_ms, total_ms, bar_w, fill), style="red" if error else "cyan")
        table.add_row(name, service, offset, duration, timeline, status,
                      style=ERROR_STYLE if error else None)
    return Group(header, table)


def short_name(name: str) -> str:
    """An RPC span's name without its package: "clawmesh.routing.v1.RoutingService/Route"
    → "RoutingService/Route" (the service column says who); other names as they are."""
    service, slash, method = name.partition("/")
    return service.rsplit(".", 1)[-1] + slash + method if slash and service else name


def _natural(header: str, cells) -> int:
    return max([len(header), *(len(c) for c in cells)])


def trace_list(response: metrics_pb2.ListTracesResponse, width: int = NO_TTY_WIDTH) -> Table:
    """One row per trace: id, start time, duration, spans, status, root span, request id;
    the request id and then the root span get what ``width`` leaves."""
    rows = []
    for t in response.traces:
        started = datetime.fromtimestamp(_ns(t.start_time) / 1e9).strftime("%H:%M:%S")
        status = Text("ERROR", style=ERROR_STYLE) if t.error else Text("ok", style="green")
        rows.append((t.trace_id, started, f"{t.duration_ms:.1f}", str(t.span_count), status,
                     Text(f"{t.root_service}: {short_name(t.root_name)}"), Text(t.request_id or "-"),
                     t.error))
    heads = ("trace id", "start", "dur ms", "spans", "status")
    fixed = [_natural(h, (r[i].plain if isinstance(r[i], Text) else r[i] for r in rows))
             for i, h in enumerate(heads)]
    spare = width - sum(fixed) - 2 * 6  # two spaces between the seven columns
    request_w = max(min(_natural("request id", (r[6].plain for r in rows)), spare - 16), 10)
    root_w = max(spare - request_w, 12)

    table = Table(box=None, pad_edge=False, header_style="bold")
    for head, w in zip(heads, fixed, strict=True):
        justify = "right" if head in ("dur ms", "spans") else "left"
        table.add_column(head, no_wrap=True, width=w, justify=justify)
    table.add_column("root", no_wrap=True, overflow="ellipsis", width=root_w)
    table.add_column("request id", no_wrap=True, overflow="ellipsis", width=request_w)
    for *cells, error in rows:
        table.add_row(*cells, style=ERROR_STYLE if error else None)
    return table
