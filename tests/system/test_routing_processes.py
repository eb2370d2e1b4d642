"""Routing through the running mesh (separate processes): streaming, mid-stream failover, cancel, SIGHUP.

The provider's two openai backends point at HTTP stand-ins served by this test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import grpc
import pytest

from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.launcher.mesh import MeshProcesses
from clawmesh.routing.v1 import routing_pb2, routing_pb2_grpc
from tests.openai_standin import OpenAIStandin, Reply
from tests.system.test_mesh_processes import mesh_env, message

pytestmark = pytest.mark.system

SERVICES = ("memory", "provider", "routing", "ingest")
RULES = """
routes:
  - name: chat
    primary: [{backend: a}]
    fallbacks: [{backend: b}]
    first_token_timeout_s: 2
"""


def backend(api: OpenAIStandin, model: str) -> dict:
    return {"kind": "openai", "base_url": api.url, "model": model, "retry": {"max_attempts": 1},
            "stall_timeout_s": 0.5}


@pytest.fixture
async def apis():
    async with OpenAIStandin() as a, OpenAIStandin() as b:
        yield a, b


def routing_env(tmp_path, a: OpenAIStandin, b: OpenAIStandin) -> dict[str, str]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return mesh_env(
        tmp_path, CLAWMESH_TELEMETRY__ENABLED="false", CLAWMESH_PROVIDER__DEFAULT_BACKEND="a",
        CLAWMESH_PROVIDER__BACKENDS=json.dumps({"a": backend(a, "model-a"), "b": backend(b, "model-b")}),
        CLAWMESH_ROUTING__DEFAULT_BACKEND="a", CLAWMESH_ROUTING__RULES_FILE=str(rules),
    )


async def test_streams_arrive_incrementally_fail_over_mid_reply_and_cancel_to_the_backend(tmp_path, apis):
    api_a, api_b = apis
    mesh = MeshProcesses(routing_env(tmp_path, api_a, api_b), services=SERVICES)
    await mesh.start()
    try:
        async with grpc.aio.insecure_channel(mesh.target("ingest")) as channel:
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)

            # 1. Chunks come through ingest as the backend sends them, 0.2 s apart.
            api_a.script(Reply("one two three four five", chunk_delay_s=0.2))
            arrivals = []
            async for response in ingest.SubmitStream(
                    ingest_pb2.SubmitStreamRequest(message=message("count", "st-1")), timeout=15):
                arrivals.append((time.monotonic(), response.chunk))
            deltas = [t for t, chunk in arrivals if chunk.delta]
            gaps = [later - earlier for earlier, later in zip(deltas, deltas[1:], strict=False)]
            assert len(deltas) == 5 and min(gaps) > 0.12, gaps
            assert arrivals[-1][1].final and arrivals[-1][1].reply.content == "one two three four five"

            # 2. a stalls after two words (the provider's 0.5 s stall timeout): b continues the reply.
            api_a.script(Reply("alpha beta gamma", stall_after=2, stall_s=10))
            api_b.script(Reply("alpha beta gamma delta"))  # a model that starts over
            chunks = [r.chunk async for r in ingest.SubmitStream(
                ingest_pb2.SubmitStreamRequest(message=message("tell me", "st-2")), timeout=15)]
            text = "".join(c.delta for c in chunks if not c.final)
            assert text == "alpha beta gamma delta" == chunks[-1].reply.content
            assert chunks[-1].reply.backend == "b"
            assert api_b.requests[-1].body["messages"][-2] == {"role": "assistant", "content": "alpha beta"}

            # 3. A client that cancels mid-stream ends the request at the backend. (b goes first
            # now: a failed a moment ago and is set aside for the health cooldown, 5 s.)
            api_b.script(Reply("first and then a long pause", stall_after=1, stall_s=10))
            request = ingest_pb2.SubmitStreamRequest(message=message("go", "st-3"))
            call = ingest.SubmitStream(request, timeout=15)
            first = await anext(aiter(call))
            assert first.chunk.delta == "first"
            call.cancel()
            await asyncio.wait_for(api_b.requests[-1].disconnected.wait(), 5)
    finally:
        codes = await mesh.stop()
    assert all(code == 0 for code in codes.values()), codes


async def test_sighup_makes_routing_reread_its_rules_and_a_bad_file_keeps_them(tmp_path, apis):
    api_a, api_b = apis
    mesh = MeshProcesses(routing_env(tmp_path, api_a, api_b), services=("memory", "provider", "routing"))
    await mesh.start()
    rules = tmp_path / "rules.yaml"
    try:
        async with grpc.aio.insecure_channel(mesh.target("routing")) as channel:
            routing = routing_pb2_grpc.RoutingServiceStub(channel)

            async def explained() -> routing_pb2.RouteDecision:
                request = routing_pb2.ExplainRequest(message=message("hi", "hup-1"))
                return (await routing.Explain(request, timeout=5)).route

            assert ((await explained()).route_name, (await explained()).backend) == ("chat", "a")
            rules.write_text("routes: [{name: chat, primary: [{backend: not-configured}]}]")
            mesh.signal("routing", signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert (await explained()).backend == "a"  # rejected: the running rules stay
            rules.write_text("routes: [{name: moved, primary: [{backend: b}], fallbacks: [{backend: a}]}]")
            mesh.signal("routing", signal.SIGHUP)
            deadline = time.monotonic() + 5
            while (route := await explained()).route_name != "moved":
                assert time.monotonic() < deadline, route
                await asyncio.sleep(0.05)
            assert [t.backend for t in route.targets] == ["b", "a"]
            api_b.script(Reply("from b"))
            request = routing_pb2.DispatchRequest(message=message("hi", "hup-1"))
            reply = await routing.Dispatch(request, timeout=10)
            assert (reply.reply.content, reply.route.route_name) == ("from b", "moved")
    finally:
        codes = await mesh.stop()
    assert all(code == 0 for code in codes.values()), codes
