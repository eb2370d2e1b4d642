"""TLS at the edge, mTLS inside, certificate renewal, the mesh token: the mesh in-process."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clawmesh.common.v1 import common_pb2
from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.services.registry import START_ORDER, by_name
from clawmesh.shared.rpc.interceptors.auth import NOT_FROM_MESH
from clawmesh.shared.rpc.server import create_server
from clawmesh.shared.security import MESH_TOKEN, Security, activated
from clawmesh.shared.security import certs as pki
from clawmesh.shared.security.certs import CA, CA_DIR, CLIENT, Issued, issue, load_identity, new_ca
from clawmesh.shared.settings import ServerSettings
from tests.inproc import inproc_mesh
from tests.security.conftest import creds, served_serial

# One cheap call per internal service; what it answers does not matter, only that it got through.
PROBES = {
    "routing": "/clawmesh.routing.v1.RoutingService/Explain",
    "memory": "/clawmesh.memory.v1.MemoryService/Stats",
    "provider": "/clawmesh.provider.v1.ProviderService/ListBackends",
    "metrics": "/clawmesh.metrics.v1.MetricsService/GetSnapshot",
}
INTERNAL = tuple(PROBES)


def inbound(text="hello", session="tls-1"):
    return common_pb2.InboundMessage(channel="web", sender="u1", session_id=session, content=text)


async def probe(target: str, method: str, credentials=None, metadata=()) -> grpc.StatusCode:
    channel = (grpc.aio.insecure_channel(target) if credentials is None
               else grpc.aio.secure_channel(target, credentials))
    async with channel:
        try:
            await channel.unary_unary(method)(b"", metadata=metadata, timeout=3)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(params=["stream", "unary"])
async def mtls_mesh(request, settings, cert_dir):
    """Every service with TLS on: ingest TLS for clients, the others mTLS."""
    settings.internal_transport = request.param
    settings.security = {"tls": True, "mtls": True, "cert_dir": cert_dir}
    with activated(Security(settings.security, "routing")):
        async with inproc_mesh(settings, services=START_ORDER) as servers:
            yield {name: server.address for name, server in servers.items()}


async def test_the_mesh_works_end_to_end_with_mtls(mtls_mesh, cert_dir):
    async with grpc.aio.secure_channel(mtls_mesh["ingest"], creds(cert_dir / CLIENT, False)) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for text in ("one", "two"):
            reply = (await stub.Submit(ingest_pb2.SubmitRequest(message=inbound(text)), timeout=5)).reply
        assert reply.content == 'mock reply 2: you said "two"; 1 earlier turn(s), previously "one"'


async def test_internal_services_refuse_clients_without_a_mesh_certificate(mtls_mesh, cert_dir):
    for name in INTERNAL:
        target, method = mtls_mesh[name], PROBES[name]
        assert await probe(target, method) == grpc.StatusCode.UNAVAILABLE, name  # plaintext
        no_cert = creds(cert_dir / CLIENT, with_certificate=False)
        assert await probe(target, method, no_cert) == grpc.StatusCode.UNAVAILABLE, name
        assert await probe(target, method, creds(cert_dir / CLIENT)) not in (
            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED), name
    # Ingest (the edge) asks for no client certificate, only TLS.
    assert await probe(mtls_mesh["ingest"], "/clawmesh.ingest.v1.IngestService/Submit") == (
        grpc.StatusCode.UNAVAILABLE)


async def test_expired_and_foreign_certificates_are_refused(mtls_mesh, cert_dir, tmp_path):
    ca = load_identity(cert_dir / CA_DIR)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = issue(ca, "expired", days=1, not_before=long_ago, server=False)
    foreign_ca = new_ca("someone else's CA")
    foreign = issue(foreign_ca, CLIENT, ("localhost",), ("127.0.0.1",))
    valid_for_foreign = tmp_path / "foreign"
    pki.write_identity(valid_for_foreign, foreign, foreign_ca.cert)
    cases = {"expired": _with_ca(tmp_path / "expired", expired, cert_dir),
             "foreign CA": _with_ca(tmp_path / "foreign-signed", foreign, cert_dir)}
    for name in ("routing", "memory"):
        for what, directory in cases.items():
            code = await probe(mtls_mesh[name], PROBES[name], creds(directory))
            assert code == grpc.StatusCode.UNAVAILABLE, (name, what)
    # A client that trusts only another CA refuses the mesh's server certificates.
    assert await probe(mtls_mesh["memory"], PROBES["memory"], creds(valid_for_foreign)) == (
        grpc.StatusCode.UNAVAILABLE)


def _with_ca(directory, issued: Issued, cert_dir):
    """``issued`` as a client identity that trusts the mesh CA (to reach the servers at all)."""
    pki.write_identity(directory, issued, load_identity(cert_dir / CA_DIR).cert)
    return directory


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path, cert_dir):
    shutil.copytree(cert_dir, tmp_path / "certs")
    certs = tmp_path / "certs"
    security = Security(Security().settings.model_validate({"mtls": True, "cert_dir": certs}), "memory")
    server = create_server(ServerSettings(port=0, grace_period_s=1), [], [], security=security)
    await server.start()
    try:
        client = certs / CLIENT
        before = await asyncio.to_thread(served_serial, server.address, client / CA, client)
        assert before == load_identity(certs / "memory").cert.serial_number
        async with grpc.aio.secure_channel(server.address, creds(client)) as kept:
            health = health_pb2_grpc.HealthStub(kept)
            await health.Check(health_pb2.HealthCheckRequest(), timeout=3)
            renewed = issue(load_identity(certs / CA_DIR), "memory", ("localhost",), ("127.0.0.1",))
            pki.write_identity(certs / "memory", renewed, load_identity(certs / CA_DIR).cert)
            after = await asyncio.to_thread(served_serial, server.address, client / CA, client)
            assert after == renewed.cert.serial_number != before
            # The connection made before the renewal goes on with its certificate.
            await health.Check(health_pb2.HealthCheckRequest(), timeout=3)
            # A broken set (key of another certificate) is not served; the last good one stays.
            (certs / "memory" / "tls.key").write_bytes(issue(new_ca(), "x").key_pem())
            assert await asyncio.to_thread(served_serial, server.address, client / CA, client) == after
    finally:
        await server.stop(0)


async def test_a_plaintext_health_port_for_probes(tmp_path, cert_dir):
    security = Security(Security().settings.model_validate(
        {"mtls": True, "cert_dir": cert_dir, "health_port": 0}), "provider")
    server = create_server(ServerSettings(port=0, grace_period_s=1), [], [by_name("provider").grpc_name],
                           security=security)
    await server.start()
    try:
        health = f"127.0.0.1:{server.health_port}"
        async with grpc.aio.insecure_channel(health) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=by_name("provider").grpc_name), timeout=3)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Nothing else is served there.
            assert await probe(health, PROBES["provider"]) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)


@pytest.fixture(params=["stream", "unary"])
async def token_mesh(request, settings):
    """Plaintext, with a mesh token: internal services want it, ingest (the edge) does not."""
    settings.internal_transport = request.param
    settings.security = {"mesh_token": "dev-mesh-token"}
    with activated(Security(settings.security, "routing")):
        async with inproc_mesh(settings, services=START_ORDER) as servers:
            yield {name: server.address for name, server in servers.items()}


async def test_the_mesh_token_guards_internal_services_when_plaintext(token_mesh):
    async with grpc.aio.insecure_channel(token_mesh["ingest"]) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for text in ("one", "two"):  # every hop carries the token (Exchange streams or RPCs)
            reply = (await stub.Submit(ingest_pb2.SubmitRequest(message=inbound(text)), timeout=5)).reply
        assert "1 earlier turn(s)" in reply.content
    for name in INTERNAL:
        target, method = token_mesh[name], PROBES[name]
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary(method)(b"", timeout=3)
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, NOT_FROM_MESH)
            wrong = ((MESH_TOKEN, "guess"),)
            assert await probe(target, method, metadata=wrong) == grpc.StatusCode.UNAUTHENTICATED
            good = ((MESH_TOKEN, "dev-mesh-token"),)
            assert await probe(target, method, metadata=good) != grpc.StatusCode.UNAUTHENTICATED
            if name != "metrics":  # an Exchange stream without the token: refused before any call on it
                service = method.rsplit("/", 2)[1]
                call = channel.stream_stream(f"/{service}/Exchange")()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call.read()
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=3)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
