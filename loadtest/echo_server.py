"""The bare EchoService: the load runner's test target and the benchmarks' baseline.

    server = await start_echo_server()       # 127.0.0.1, a free port, health + reflection
    ... server.address ...
    await server.stop(0)

A message ``error:<CODE>`` (e.g. ``error:INVALID_ARGUMENT``) makes the call fail with
that status; ``delay_ms`` (Echo) delays the answer. Standalone:
``python -m clawmesh.loadtest.echo_server --port 50060``.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from clawmesh.shared.rpc.server import MeshServer, create_server
from clawmesh.shared.settings import ServerSettings
from clawmesh.testing.v1 import echo_pb2, echo_pb2_grpc

SERVICE = "clawmesh.testing.v1.EchoService"


async def _check(message: str, context: grpc.aio.ServicerContext) -> None:
    if message.startswith("error:"):
        name = message[6:].split(":", 1)[0]
        code = getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)
        await context.abort(code, f"requested {name}")


class EchoServicer(echo_pb2_grpc.EchoServiceServicer):
    """Returns what it is sent; see the module docstring for the failure trigger."""

    async def Echo(self, request, context):  # noqa: N802 - gRPC method name
        await _check(request.message, context)
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        return echo_pb2.EchoResponse(message=request.message)

    async def ServerStream(self, request, context):  # noqa: N802
        await _check(request.message, context)
        for i in range(request.count):
            yield echo_pb2.ServerStreamResponse(message=request.message, index=i)

    async def ClientStream(self, request_iterator, context):  # noqa: N802
        parts = []
        async for req in request_iterator:
            await _check(req.message, context)
            parts.append(req.message)
        return echo_pb2.ClientStreamResponse(message=" ".join(parts), count=len(parts))

    async def Chat(self, request_iterator, context):  # noqa: N802
        async for req in request_iterator:
            await _check(req.message, context)
            yield echo_pb2.ChatResponse(message=req.message)


def build_echo_server(host: str = "127.0.0.1", port: int = 0) -> MeshServer:
    """An unstarted echo server (health + reflection included)."""
    settings = ServerSettings(host=host, port=port, grace_period_s=1.0)
    return create_server(settings, [(echo_pb2_grpc.add_EchoServiceServicer_to_server,
                                     EchoServicer())], [SERVICE])


async def start_echo_server(host: str = "127.0.0.1", port: int = 0) -> MeshServer:
    server = build_echo_server(host, port)
    await server.start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bare EchoService (benchmark baseline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50060)
    args = parser.parse_args(argv)
    from clawmesh.loadtest.parallel import run_async

    async def serve() -> None:
        await build_echo_server(args.host, args.port).serve_until_signal()

    run_async(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
