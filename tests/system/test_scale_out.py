"""N replicas acting as one: two ingest and two routing processes over one Redis and one memory.

Real `clawmesh serve` processes on distinct ports, as Kubernetes runs them behind headless
Services: each ingest reaches routing through one multi-address target
(``ipv4:127.0.0.1:A,127.0.0.1:B``, round_robin over both, as ``dns:///routing`` resolves to
every pod), and both ingest replicas keep their edge state in one redis-server through the
policy file (``backend: redis``). Shown here:

- a conversation whose messages alternate between the ingest replicas keeps its history;
- a rate limit and dedup hold across replicas (one quota, one store);
- SIGKILL of a routing replica under load loses no acknowledged message: the client retries
  UNAVAILABLE with the same channel_message_id (dedup makes that safe), the other replica
  serves, and memory holds each acknowledged message exactly once;
- each replica serves its own /metrics (shared/prometheus.py).

The processes are started once for the module; the kill test runs last and leaves one
routing replica.
"""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clawmesh.common.v1 import common_pb2
from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.launcher.mesh import MeshProcesses, child_env
from clawmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from clawmesh.shared import metadata as md
from tests.conftest import free_port

pytestmark = pytest.mark.system

LIMITED_TENANT = "limited"
QUOTA = 5  # messages per minute for LIMITED_TENANT, shared by both ingest replicas
POLICY = """\
backend: {{kind: redis, redis_url: "{redis_url}", op_timeout_ms: 500, on_error: fail_closed}}
dedup: {{strategy: exact, ttl_s: 600}}
rate_limits:
  rules:
    - match: {{tenant: {tenant}}}
      limits: [{{name: limited-minute, rate: {quota}, per: minute, burst: {quota}}}]
"""


class Cluster:
    """memory + provider, routing a/b, ingest a/b: each its own MeshProcesses (one service)."""

    def __init__(self, tmp_path, redis_url: str) -> None:
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(redis_url=redis_url, tenant=LIMITED_TENANT, quota=QUOTA))
        base = {k: v for k, v in os.environ.items() if not k.startswith("CLAWMESH_")}
        shared = {
            "CLAWMESH_MEMORY__PORT": str(free_port()), "CLAWMESH_PROVIDER__PORT": str(free_port()),
            "CLAWMESH_MEMORY__DATA_DIR": str(tmp_path / "data"),
            # A model-like delay, so SIGKILL finds calls in flight.
            "CLAWMESH_PROVIDER__MOCK_LATENCY_MS": "20",
            "CLAWMESH_TELEMETRY__ENABLED": "false", "CLAWMESH_TELEMETRY__TRACING_ENABLED": "false",
            "CLAWMESH_LOG_LEVEL": "ERROR",
        }
        self.routing_ports = {r: free_port() for r in "ab"}
        self.ingest_ports = {i: free_port() for i in "ab"}
        self.metrics_ports = {i: free_port() for i in "ab"}
        both = ",".join(f"127.0.0.1:{p}" for p in self.routing_ports.values())
        self.leaves = MeshProcesses(child_env(base, shared), services=("memory", "provider"))
        self.routing = {r: MeshProcesses(child_env(base, {**shared, "CLAWMESH_ROUTING__PORT": str(port)}),
                                         services=("routing",))
                        for r, port in self.routing_ports.items()}
        self.ingest = {i: MeshProcesses(child_env(base, {
            **shared, "CLAWMESH_INGEST__PORT": str(port), "CLAWMESH_ROUTING__ADDRESS": f"ipv4:{both}",
            "CLAWMESH_INGEST__POLICY_FILE": str(policy),
            "CLAWMESH_INGEST__PROMETHEUS_PORT": str(self.metrics_ports[i]),
        }), services=("ingest",)) for i, port in self.ingest_ports.items()}

    def groups(self) -> list[MeshProcesses]:
        return [self.leaves, *self.routing.values(), *self.ingest.values()]

    async def start(self) -> None:
        started: list[MeshProcesses] = []
        try:
            for group in self.groups():  # leaves first: each start waits for SERVING
                started.append(group)
                await group.start(timeout_s=60)
        except BaseException:
            for group in reversed(started):
                await group.stop(grace_s=1.0)
            raise

    async def stop(self) -> dict[str, int | None]:
        codes = {}
        for group in reversed(self.groups()):  # edge first
            for name, code in (await group.stop(grace_s=5.0)).items():
                codes[f"{name}:{group.procs[name].pid}"] = code
        return codes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis_server):
    redis_server.flush()
    mesh = Cluster(tmp_path_factory.mktemp("scale-out"), redis_server.url)
    asyncio.run(mesh.start())  # processes outlive this loop; each test talks in its own
    yield mesh
    codes = asyncio.run(mesh.stop())
    killed = {k: c for k, c in codes.items() if c == -signal.SIGKILL}
    assert all(c == 0 for k, c in codes.items() if k not in killed), codes


def message(text: str, session: str, msg_id: str) -> common_pb2.InboundMessage:
    return common_pb2.InboundMessage(channel="telegram", sender="alice", session_id=session,
                                     content=text, channel_message_id=msg_id)


async def submit(stub, msg: common_pb2.InboundMessage, tenant: str = "") -> tuple[str, dict]:
    """The reply's content and the trailing metadata."""
    metadata = ((md.TENANT, tenant),) if tenant else ()
    call = stub.Submit(ingest_pb2.SubmitRequest(message=msg), metadata=metadata, timeout=10)
    response = await call
    return response.reply.content, dict(await call.trailing_metadata())


async def history(cluster: Cluster, session: str) -> list[common_pb2.Message]:
    async with grpc.aio.insecure_channel(cluster.leaves.target("memory")) as channel:
        reply = await memory_pb2_grpc.MemoryServiceStub(channel).GetHistory(
            memory_pb2.GetHistoryRequest(session_id=session, limit=500),
            metadata=((md.TENANT, "default"),), timeout=10)
    return list(reply.messages)


class Edge:
    """One channel per ingest replica."""

    def __init__(self, cluster: Cluster) -> None:
        ports = cluster.ingest_ports
        self.channels = {i: grpc.aio.insecure_channel(f"127.0.0.1:{p}") for i, p in ports.items()}
        self.stubs = {i: ingest_pb2_grpc.IngestServiceStub(c) for i, c in self.channels.items()}

    def __getitem__(self, n: int):
        return self.stubs["ab"[n % 2]]

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


def submit_count(port: int) -> float:
    """OK Submits an ingest replica has answered, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "grpc_server_handled_total" and s.labels["grpc_method"] == "Submit"
               and s.labels["grpc_code"] == "OK")


async def test_a_conversation_over_both_ingest_replicas_keeps_its_history(cluster):
    before = {i: await asyncio.to_thread(submit_count, p) for i, p in cluster.metrics_ports.items()}
    edge = Edge(cluster)
    try:
        texts = ["my name is Alice", "I like tea", "and green tea best", "what do you know?"]
        replies = [(await submit(edge[n], message(t, "spread", f"spread-{n}"))) for n, t in enumerate(texts)]
    finally:
        await edge.close()
    assert replies[-1][0].endswith('3 earlier turn(s), previously "and green tea best"'), replies[-1]
    stored = await history(cluster, "spread")
    turns = zip(texts, (reply for reply, _ in replies), strict=True)
    assert [m.content for m in stored] == [text for turn in turns for text in turn]
    # Each replica answered two of them, and its own /metrics counted them.
    after = {i: await asyncio.to_thread(submit_count, p) for i, p in cluster.metrics_ports.items()}
    assert {i: after[i] - before[i] for i in after} == {"a": 2, "b": 2}


async def test_one_rate_limit_and_one_dedup_store_across_replicas(cluster):
    edge = Edge(cluster)
    try:
        outcomes = []
        for n in range(QUOTA + 3):  # alternating replicas: one quota between them
            try:
                await submit(edge[n], message(f"limited {n}", "quota", f"q-{n}"), tenant=LIMITED_TENANT)
                outcomes.append("OK")
            except grpc.aio.AioRpcError as exc:
                outcomes.append(exc.code().name)
        assert outcomes == ["OK"] * QUOTA + ["RESOURCE_EXHAUSTED"] * 3, outcomes

        # A copy sent to the other replica gets the original reply, replayed.
        first, trailers = await submit(edge[0], message("only once", "dedup", "d-1"))
        again, replayed = await submit(edge[1], message("only once", "dedup", "d-1"))
        assert again == first and replayed.get("x-clawmesh-replayed") == "true", replayed
        assert trailers.get("x-clawmesh-replayed") != "true"
        # Copies sent to both at once: one is processed, the other waits for its reply.
        pair = await asyncio.gather(*(submit(edge[n], message("at once", "dedup", "d-2")) for n in (0, 1)))
        assert pair[0][0] == pair[1][0]
        assert sorted(t.get("x-clawmesh-replayed", "false") for _, t in pair) == ["false", "true"]
    finally:
        await edge.close()
    assert [m.content for m in await history(cluster, "dedup") if m.role == common_pb2.ROLE_USER] == [
        "only once", "at once"]


async def test_killing_a_routing_replica_loses_no_acknowledged_message(cluster):
    """Last in this module: it leaves routing b alone."""
    workers, per_worker = 4, 15
    acked: dict[str, str] = {}  # channel_message_id -> content
    retries = {"count": 0}  # usually 1-3: the calls in flight on the killed replica
    kill_after = workers * per_worker // 4
    killed = asyncio.Event()
    edge = Edge(cluster)

    async def worker(w: int) -> None:
        for i in range(per_worker):
            msg = message(f"worker {w} message {i}", f"kill-{w}", f"k-{w}-{i}")
            for attempt in range(40):
                try:
                    await submit(edge[w + i + attempt], msg)  # a retry may go to the other ingest
                    break
                except grpc.aio.AioRpcError as exc:
                    # The only failure allowed: the routing replica behind the call died.
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
                    retries["count"] += 1
                    await asyncio.sleep(0.05)
            else:
                pytest.fail(f"{msg.channel_message_id} never acknowledged")
            acked[msg.channel_message_id] = msg.content
            if len(acked) >= kill_after and not killed.is_set():
                killed.set()

    async def killer() -> None:
        await killed.wait()
        cluster.routing["a"].signal("routing", signal.SIGKILL)  # mid-load: calls are in flight

    try:
        await asyncio.wait_for(asyncio.gather(killer(), *(worker(w) for w in range(workers))), 60)
    finally:
        await edge.close()
    assert await cluster.routing["a"].wait_exit("routing", 5) == -signal.SIGKILL
    assert len(acked) == workers * per_worker, retries  # routing b served all the rest
    for w in range(workers):
        stored = await history(cluster, f"kill-{w}")
        users = [m.content for m in stored if m.role == common_pb2.ROLE_USER]
        assert users == [f"worker {w} message {i}" for i in range(per_worker)], users  # each once
        assert len(stored) == 2 * per_worker  # and one reply each
