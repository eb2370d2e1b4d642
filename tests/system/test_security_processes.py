"""The mesh as processes with API keys, TLS at the edge and mTLS inside (certs from `clawmesh certs`).

One mesh for the module: end to end with keys and mTLS, tenant isolation through every
RPC a client reaches, internal services refusing callers without a mesh certificate, a
renewed certificate served without a restart, and a bounded fuzz run against the ingest
process with its RSS measured before and after.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import given

from clawmesh.common.v1 import common_pb2
from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.launcher.mesh import MeshProcesses
from clawmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from clawmesh.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from clawmesh.shared.security import hash_key
from clawmesh.shared.security.certs import CA, CA_DIR, CLIENT, issue, load_identity, write_identity
from tests.security import front_door as fd
from tests.security.conftest import KEY_A, KEY_B, api_keys, creds, served_serial
from tests.system.test_mesh_processes import mesh_env

pytestmark = pytest.mark.system

INTERNAL_PROBES = {
    "routing": "/clawmesh.routing.v1.RoutingService/Explain",
    "memory": "/clawmesh.memory.v1.MemoryService/Stats",
    "provider": "/clawmesh.provider.v1.ProviderService/ListBackends",
    "metrics": "/clawmesh.metrics.v1.MetricsService/GetSnapshot",
}


def key(k: str, *more) -> tuple:
    return (("authorization", f"Bearer {k}"), *more)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    done = subprocess.run([sys.executable, "-m", "clawmesh.launcher.cli", "certs", "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, certs):
    tmp = tmp_path_factory.mktemp("secure-mesh")
    env = mesh_env(tmp, CLAWMESH_SECURITY__AUTH="api_key", CLAWMESH_SECURITY__API_KEYS=json.dumps(api_keys()),
                   CLAWMESH_SECURITY__TLS="true", CLAWMESH_SECURITY__MTLS="true",
                   CLAWMESH_SECURITY__CERT_DIR=str(certs))
    processes = MeshProcesses(env)
    asyncio.run(processes.start())  # the processes outlive this loop; each test talks in its own
    yield processes
    codes = asyncio.run(processes.stop())
    assert all(code == 0 for code in codes.values()), codes


@pytest.fixture
async def ingest(mesh, certs):
    async with grpc.aio.secure_channel(mesh.target("ingest"), creds(certs / CLIENT, False)) as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)


def msg(text: str, session: str = "shared", msg_id: str = "") -> common_pb2.InboundMessage:
    return common_pb2.InboundMessage(channel="telegram", sender="alice", session_id=session, content=text,
                                     channel_message_id=msg_id)


async def test_end_to_end_with_keys_and_mtls(mesh, ingest, certs):
    reply = (await ingest.Submit(ingest_pb2.SubmitRequest(message=msg("hi", "e2e")), metadata=key(KEY_A),
                                 timeout=10)).reply
    assert reply.content.startswith('mock reply 1: you said "hi"')
    chunks = [r.chunk async for r in ingest.SubmitStream(
        ingest_pb2.SubmitStreamRequest(message=msg("there", "e2e")), metadata=key(KEY_A), timeout=10)]
    assert chunks[-1].final and "1 earlier turn(s)" in chunks[-1].reply.content
    # Every service exported its figures to metrics over mTLS.
    async with grpc.aio.secure_channel(mesh.target("metrics"), creds(certs / CLIENT)) as channel:
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        deadline = time.monotonic() + 10
        while True:
            snapshot = await stub.GetSnapshot(metrics_pb2.GetSnapshotRequest(), timeout=5)
            if {"ingest", "routing", "memory", "provider"} <= {s.service for s in snapshot.services}:
                break
            assert time.monotonic() < deadline, [s.service for s in snapshot.services]
            await asyncio.sleep(0.2)


async def test_edge_refusals(ingest):
    request = ingest_pb2.SubmitRequest(message=msg("x", "refused"))
    cases = [((), grpc.StatusCode.UNAUTHENTICATED),
             (key("cmk_wrong-00000000000000000000000000000000000000000"), grpc.StatusCode.UNAUTHENTICATED),
             (key(KEY_A, ("x-clawmesh-tenant", "globex")), grpc.StatusCode.PERMISSION_DENIED)]
    for metadata, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ingest.Submit(request, metadata=metadata, timeout=10)
        assert err.value.code() == code


async def test_internal_services_accept_only_mesh_certificates(mesh, certs):
    for name, method in INTERNAL_PROBES.items():
        for credentials in (None, creds(certs / CLIENT, with_certificate=False)):
            channel = (grpc.aio.insecure_channel(mesh.target(name)) if credentials is None
                       else grpc.aio.secure_channel(mesh.target(name), credentials))
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await channel.unary_unary(method)(b"", timeout=5)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, name
        async with grpc.aio.secure_channel(mesh.target(name), creds(certs / CLIENT)) as channel:
            try:
                await channel.unary_unary(method)(b"", timeout=5)
            except grpc.aio.AioRpcError as exc:  # got through TLS: any answer of the service's own
                assert exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED), name


async def test_tenants_never_see_each_others_data(mesh, ingest, certs):
    """Same session, channel and channel message id under two tenants: two conversations."""
    a = await ingest.Submit(ingest_pb2.SubmitRequest(message=msg("secret of acme", "iso", "m-1")),
                            metadata=key(KEY_A), timeout=10)
    b = await ingest.Submit(ingest_pb2.SubmitRequest(message=msg("hello from globex", "iso", "m-1")),
                            metadata=key(KEY_B), timeout=10)
    assert not b.replayed and "secret of acme" not in b.reply.content and "0 earlier" in b.reply.content
    again = await ingest.Submit(ingest_pb2.SubmitRequest(message=msg("secret of acme", "iso", "m-1")),
                                metadata=key(KEY_A), timeout=10)
    assert again.replayed and again.reply.content == a.reply.content  # the replay is acme's own
    b_again = await ingest.Submit(ingest_pb2.SubmitRequest(message=msg("hello from globex", "iso", "m-1")),
                                  metadata=key(KEY_B), timeout=10)
    assert b_again.replayed and b_again.reply.content == b.reply.content
    converse = ingest.Converse(iter([ingest_pb2.ConverseRequest(message=msg("more", "iso", "m-2"))]),
                               metadata=key(KEY_B), timeout=10)
    replies = [r async for r in converse]
    assert "secret of acme" not in replies[0].reply.content
    assert "1 earlier turn(s)" in replies[0].reply.content
    # Memory, called directly with a mesh certificate, keeps the tenants apart too.
    async with grpc.aio.secure_channel(mesh.target("memory"), creds(certs / CLIENT)) as channel:
        memory = memory_pb2_grpc.MemoryServiceStub(channel)
        as_a, as_b = (("x-clawmesh-tenant", "acme"),), (("x-clawmesh-tenant", "globex"),)
        iso = memory_pb2.GetHistoryRequest(session_id="iso")
        history_a = await memory.GetHistory(iso, metadata=as_a, timeout=5)
        history_b = await memory.GetHistory(iso, metadata=as_b, timeout=5)
        assert any("secret of acme" in m.content for m in history_a.messages)
        assert not any("acme" in m.content for m in history_b.messages)
        hits = await memory.Search(memory_pb2.SearchRequest(session_id="iso", query="secret"), metadata=as_b,
                                   timeout=5)
        assert not hits.hits
        sessions_b = await memory.ListSessions(memory_pb2.ListSessionsRequest(), metadata=as_b, timeout=5)
        assert {s.session_id for s in sessions_b.sessions} == {"iso"}  # globex's only session
        await memory.DeleteSession(memory_pb2.DeleteSessionRequest(session_id="iso"), metadata=as_b,
                                   timeout=5)
        still = await memory.GetHistory(iso, metadata=as_a, timeout=5)
        assert len(still.messages) == len(history_a.messages)


async def test_a_renewed_certificate_is_served_without_a_restart(mesh, certs):
    client = certs / CLIENT
    target = mesh.target("routing")
    before = await asyncio.to_thread(served_serial, target, client / CA, client)
    ca = load_identity(certs / CA_DIR)
    renewed = issue(ca, "routing", ("localhost", "routing"), ("127.0.0.1",))
    write_identity(certs / "routing", renewed, ca.cert)
    after = await asyncio.to_thread(served_serial, target, client / CA, client)
    assert before != after == renewed.cert.serial_number
    async with grpc.aio.secure_channel(target, creds(client)) as channel:
        await channel.unary_unary(INTERNAL_PROBES["routing"])(b"", timeout=5)


FUZZ_CHANNEL: list = []


@fd.FUZZ
@given(message=fd.inbound_messages())
def _fuzz_messages(message):
    channel, limits = FUZZ_CHANNEL
    request = ingest_pb2.SubmitRequest(message=message)
    try:
        channel.unary_unary(fd.SERVICE + "Submit")(request.SerializeToString(), metadata=key(KEY_A),
                                                    timeout=fd.TIMEOUT_S)
        code, details, status = grpc.StatusCode.OK, "", None
    except grpc.RpcError as exc:
        code, details, status = exc.code(), exc.details() or "", fd.status_of(exc)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in details:
        return
    fd.check(code, details, status, request, limits, "acme")


@fd.FUZZ
@given(body=fd.frames)
def _fuzz_frames(body):
    channel, limits = FUZZ_CHANNEL
    try:
        channel.unary_unary(fd.SERVICE + "Submit")(body, metadata=key(KEY_A), timeout=fd.TIMEOUT_S)
        code, details, status = grpc.StatusCode.OK, "", None
    except grpc.RpcError as exc:
        code, details, status = exc.code(), exc.details() or "", fd.status_of(exc)
    fd.check(code, details, status, fd.decodes(body), limits, "acme")


async def test_hostile_input_against_the_ingest_process(mesh, certs):
    pid = mesh.procs["ingest"].pid
    credentials = creds(certs / CLIENT, with_certificate=False)
    bystander = fd.Bystander(mesh.target("ingest"), key(KEY_B), credentials).start()
    channel = grpc.secure_channel(mesh.target("ingest"), credentials)
    FUZZ_CHANNEL[:] = [channel, mesh.settings.ingest]
    try:
        await asyncio.to_thread(_fuzz_messages)  # a first round warms the process up
        before = rss_kib(pid)
        await asyncio.to_thread(_fuzz_frames)
        await asyncio.to_thread(_fuzz_messages)
        after = rss_kib(pid)
    finally:
        channel.close()
        bystander.stop()
    assert mesh.exited() == {}, mesh.exited()
    assert bystander.failures == [] and bystander.ok > 0, bystander.failures[:3]
    print(f"\ningest RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB over {3 * fd.EXAMPLES} hostile calls; "
          f"bystander {bystander.ok} OK")
    # Ingest keeps each admitted message's reply for dedup replays (up to 32 KiB of echoed content
    # with the mock backend): state that grows with the examples, bounded by the dedup TTL.
    assert after - before < 40 * 1024 + 20 * fd.EXAMPLES, (before, after)


def test_keys_hash_matches_what_the_mesh_checks():
    done = subprocess.run([sys.executable, "-m", "clawmesh.launcher.cli", "keys", "hash"], input=KEY_A + "\n",
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == hash_key(KEY_A), done.stderr


async def test_the_cli_sends_with_a_key_over_tls_and_reads_traces_over_mtls(mesh, tmp_path):
    """`clawmesh send --api-key-file` against the secured edge; `clawmesh trace --list` via mTLS."""
    env = dict(mesh.env)

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clawmesh.launcher.cli", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode(), err.decode()

    key_file = tmp_path / "key"
    key_file.write_text(KEY_A + "\n")
    code, out, err = await cli("send", "--api-key-file", str(key_file), "--session", "cli", "hello", "there")
    assert code == 0, err
    assert 'you said "hello there"' in out
    code, out, err = await cli("send", "--session", "cli", "no key")
    assert code == 1 and "UNAUTHENTICATED" in err, (out, err)
    code, out, err = await cli("trace", "--list", "--limit", "5")
    assert code in (0, 1), err  # reachable over mTLS: a list, or "no recent traces" — never a TLS error
    assert "UNAVAILABLE" not in err and "handshake" not in err.lower(), err
