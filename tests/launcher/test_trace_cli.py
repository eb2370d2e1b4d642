"""`clawmesh trace` as a user runs it: a subprocess (no TTY) against a real metrics server.

The server runs on this test's event loop on port 0 and receives real OTLP exports; the
command finds it through ``--target`` or, like `clawmesh health`, through the settings
(``CLAWMESH_METRICS__PORT``).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from clawmesh.launcher.cli import main
from clawmesh.services.metrics.main import build
from clawmesh.services.metrics.waterfall import NO_TTY_WIDTH, bar, short_name
from clawmesh.shared.settings import MeshSettings
from tests.conftest import free_port
from tests.services.metrics.otlp_traces import mesh_trace, trace_hex

REQUEST_ID = "5d1e6a0c7f3b4e2a9c8d7b6a5f4e3d2c"  # ingest's request ids look like trace ids


@pytest.fixture
async def metrics():
    server = await build(MeshSettings(metrics={"port": 0}))
    await server.start()
    async with grpc.aio.insecure_channel(server.address) as channel:
        export = trace_service_pb2_grpc.TraceServiceStub(channel).Export
        await export(mesh_trace(1, start_ms=0, total_ms=40, error=True, request_id=REQUEST_ID), timeout=5)
        await export(mesh_trace(2, start_ms=100, total_ms=10, request_id="r-2"), timeout=5)
        await export(mesh_trace(3, start_ms=200, total_ms=25, request_id="r-3"), timeout=5)
    yield server
    await server.stop(grace_s=0)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWMESH_")}
    env.update(COLUMNS="200", **extra)  # no TTY: the fixed width wins over COLUMNS
    return env


async def clawmesh(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clawmesh.launcher.cli", *args, env=env or cli_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def span_rows(out: str) -> list[str]:
    lines = out.splitlines()
    return lines[lines.index(next(line for line in lines if line.startswith("span "))) + 1:]


async def test_trace_prints_the_waterfall_of_one_trace(metrics):
    code, out, err = await clawmesh("trace", trace_hex(1), "--target", metrics.address)
    assert code == 0, err
    assert out.startswith(f"trace {trace_hex(1)}  request {REQUEST_ID}\n"), out
    assert "5 span(s), 40.0 ms, services: ingest, memory, provider, routing" in out
    assert max(len(line) for line in out.splitlines()) <= NO_TTY_WIDTH
    assert "\x1b[" not in out  # not a terminal: no colour codes
    rows = span_rows(out)
    expected = [  # indent by depth, name, service, start offset ms, duration ms
        ("", "IngestService/Submit", "ingest", "0.0", "40.0"),
        ("  ", "RoutingService/Route", "ingest", "1.0", "38.0"),
        ("    ", "RoutingService/Route", "routing", "2.0", "36.0"),
        ("      ", "ProviderService/Generate", "provider", "3.0", "17.0"),
        ("      ", "MemoryService/Append", "memory", "21.0", "16.0"),
    ]
    assert len(rows) == len(expected), out
    for row, (indent, name, service, start, duration) in zip(rows, expected, strict=True):
        assert re.match(rf"{indent}{re.escape(name)}\s+{service}\s+{start}\s+{duration}\s", row), row
    bars = [re.search(r"[█#]+", row[60:]) for row in rows]  # past the name, service and figures
    assert all(bars), rows
    assert bars[0].end() - bars[0].start() > bars[3].end() - bars[3].start()  # longer span, longer bar
    assert bars[4].start() > bars[3].start()  # later span, bar starts further right
    assert "ERROR UNAVAILABLE: backend down" in rows[3]
    assert [("ERROR" in row) for row in rows] == [False, False, False, True, False]


async def test_trace_finds_a_trace_by_request_id(metrics):
    for request_id, trace in ((REQUEST_ID, 1), ("r-3", 3)):
        code, out, err = await clawmesh("trace", request_id, "--target", metrics.address)
        assert code == 0, err
        assert out.startswith(f"trace {trace_hex(trace)}  request {request_id}\n"), out


async def test_an_unknown_trace_exits_1_naming_it(metrics):
    for unknown in ("4bf92f3577b34da6a3ce929d0e0e4736", "no-such-request"):
        code, out, err = await clawmesh("trace", unknown, "--target", metrics.address)
        assert (code, out) == (1, "")
        assert f"no trace with id or request id {unknown!r}" in err


async def test_the_target_comes_from_the_settings(metrics):
    port = metrics.address.rsplit(":", 1)[1]
    code, out, err = await clawmesh("trace", "r-2", env=cli_env(CLAWMESH_METRICS__PORT=port))
    assert code == 0, err
    assert out.startswith(f"trace {trace_hex(2)}  request r-2\n"), out


def listed(out: str) -> list[tuple[int, str, str]]:
    """(trace number, status, request id) per listed row."""
    rows = out.splitlines()
    assert rows[0].split()[:5] == ["trace", "id", "start", "dur", "ms"], out
    return [(int(row.split()[0], 16), row.split()[4], row.split()[-1]) for row in rows[1:]]


async def test_trace_list_recent_slowest_and_errored(metrics):
    target = ("--target", metrics.address)
    code, out, err = await clawmesh("trace", "--list", *target)
    assert code == 0, err
    assert listed(out) == [(3, "ok", "r-3"), (2, "ok", "r-2"), (1, "ERROR", REQUEST_ID)]
    assert "ingest: IngestService/Submit" in out
    assert max(len(line) for line in out.splitlines()) <= NO_TTY_WIDTH

    code, out, err = await clawmesh("trace", "--list", "--slowest", "--limit", "2", *target)
    assert [n for n, _, _ in listed(out)] == [1, 3]
    code, out, err = await clawmesh("trace", "--errored", *target)  # implies --list
    assert [n for n, _, _ in listed(out)] == [1]
    code, out, err = await clawmesh("trace", "--list", "--service", "nobody", *target)
    assert (code, out) == (0, "")
    assert "no recent traces (3 held)" in err


async def test_a_metrics_service_that_does_not_answer_exits_1():
    target = f"127.0.0.1:{free_port()}"
    code, out, err = await clawmesh("trace", "r-1", "--target", target, "--timeout", "2")
    assert (code, out) == (1, "")
    assert f"metrics service at {target}: UNAVAILABLE" in err


def test_usage_errors_exit_2(capsys):
    assert main(["trace"]) == 2
    assert main(["trace", "abc", "--list"]) == 2
    assert "give a trace id or a request id, or --list" in capsys.readouterr().err
    assert main(["trace", "--list", "--limit", "0"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["trace", "--slowest", "--errored"])
    assert exit_info.value.code == 2


def test_bar_is_proportional_and_stays_in_its_width():
    assert bar(0, 100, 100, 10) == "█" * 10
    assert bar(50, 25, 100, 10) == "     ███  "  # starts half way, a quarter long (rounded)
    assert bar(99, 0.01, 100, 10) == " " * 9 + "█"  # any span gets one character
    assert bar(0, 1, 0, 4, fill="#") == "#   "  # a zero-length trace
    assert all(len(bar(o, d, 100, 12)) == 12 for o in (0, 30, 99) for d in (0, 50, 100))


def test_short_names_drop_the_rpc_package():
    assert short_name("clawmesh.routing.v1.RoutingService/Route") == "RoutingService/Route"
    assert short_name("load history") == "load history"
    assert short_name("/just/a/path") == "/just/a/path"
