"""API keys at the edge over real gRPC, the mesh in-process behind ingest."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clawmesh.common.v1 import common_pb2
from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.shared.rpc.interceptors import server_chain
from clawmesh.shared.rpc.interceptors.auth import ApiKeyInterceptor, MeshTokenInterceptor
from clawmesh.shared.security import Security, activated
from clawmesh.shared.security.keys import INVALID, MISSING
from clawmesh.shared.settings import SecuritySettings
from tests.fakes import FakeClock
from tests.inproc import inproc_mesh
from tests.security.conftest import KEY_A, KEY_A_OLD, KEY_B, api_keys

REQUEST_PATH = ("memory", "provider", "routing", "ingest")
NOT_AFTER = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def inbound(text="hello", session="s1", **kw):
    return common_pb2.InboundMessage(channel="telegram", sender="u1", session_id=session, content=text, **kw)


def bearer(key: str, *more) -> tuple:
    return (("authorization", f"Bearer {key}"), *more)


@pytest.fixture
async def edge(settings):
    """(ingest stub, clock): API keys on, acme mid-rotation (old key valid until NOT_AFTER)."""
    settings.security = {"auth": "api_key", "api_keys": api_keys(NOT_AFTER.isoformat())}
    clock = FakeClock(NOT_AFTER.timestamp() - 3600)
    with activated(Security(settings.security, "ingest", clock=clock)):
        async with inproc_mesh(settings, services=REQUEST_PATH) as servers:
            async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
                yield ingest_pb2_grpc.IngestServiceStub(channel), channel, clock


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def test_a_key_gives_its_tenant(edge):
    stub, _, _ = edge
    def submit(text, key):
        return stub.Submit(ingest_pb2.SubmitRequest(message=inbound(text)), metadata=bearer(key), timeout=5)

    first = await submit("a1", KEY_A)
    other = await submit("b1", KEY_B)  # the same session under tenant globex: another conversation
    assert "0 earlier turn(s)" in first.reply.content and "0 earlier turn(s)" in other.reply.content
    again = await submit("a2", KEY_A)
    assert 'previously "a1"' in again.reply.content and "b1" not in again.reply.content


@pytest.mark.parametrize("metadata, message", [
    ((), MISSING),
    (bearer("cmk_wrong-key-000000000000000000000000000000000000"), INVALID),
    ((("authorization", KEY_A),), INVALID),  # no Bearer scheme
])
async def test_no_key_or_a_wrong_key_is_unauthenticated(edge, metadata, message):
    stub, _, _ = edge
    err = await refused(stub.Submit(ingest_pb2.SubmitRequest(message=inbound()), metadata=metadata,
                                    timeout=5))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and err.details() == message
    assert "acme" not in err.details() and "globex" not in err.details()


async def test_every_shape_of_call_is_checked(edge):
    stub, _, _ = edge
    stream = stub.SubmitStream(ingest_pb2.SubmitStreamRequest(message=inbound()), timeout=5)
    err = await refused(stream.read())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    converse = stub.Converse(iter([ingest_pb2.ConverseRequest(message=inbound())]), timeout=5)
    err = await refused(converse.read())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    ok = stub.Converse(iter([ingest_pb2.ConverseRequest(message=inbound(channel_message_id="c1"))]),
                       metadata=bearer(KEY_B), timeout=5)
    assert [r.reply.session_id async for r in ok] == ["s1"]


async def test_rotation_overlap_then_the_old_key_is_revoked(edge):
    stub, _, clock = edge
    for key in (KEY_A_OLD, KEY_A):
        response = await stub.Submit(ingest_pb2.SubmitRequest(message=inbound()), metadata=bearer(key),
                                     timeout=5)
        assert response.reply.content.startswith("mock reply")
    clock.set(NOT_AFTER.timestamp())
    err = await refused(stub.Submit(ingest_pb2.SubmitRequest(message=inbound()), metadata=bearer(KEY_A_OLD),
                                    timeout=5))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and err.details() == INVALID
    assert (await stub.Submit(ingest_pb2.SubmitRequest(message=inbound()), metadata=bearer(KEY_A),
                              timeout=5)).reply.content


async def test_a_key_claiming_another_tenant_is_denied(edge):
    stub, _, _ = edge
    err = await refused(stub.Submit(ingest_pb2.SubmitRequest(message=inbound()),
                                    metadata=bearer(KEY_A, ("x-clawmesh-tenant", "globex")), timeout=5))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await refused(stub.Submit(ingest_pb2.SubmitRequest(message=inbound(tenant="globex")),
                                    metadata=bearer(KEY_A), timeout=5))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # Claiming its own tenant is fine.
    ok = await stub.Submit(ingest_pb2.SubmitRequest(message=inbound(tenant="acme")),
                           metadata=bearer(KEY_A, ("x-clawmesh-tenant", "acme")), timeout=5)
    assert ok.reply.content


async def test_health_and_reflection_need_no_key(edge):
    _, channel, _ = edge
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_chain_has_the_checks_the_settings_ask_for():
    assert not [ic for ic in server_chain() if isinstance(ic, ApiKeyInterceptor | MeshTokenInterceptor)]
    security = Security(SecuritySettings(mesh_token="t"))
    with activated(security):
        kinds = [type(ic) for ic in server_chain()]
    assert MeshTokenInterceptor in kinds and ApiKeyInterceptor not in kinds
    # Only the edge's methods are checked for keys; the token never guards the edge or health.
    token = MeshTokenInterceptor(security)
    assert token.bypass("/grpc.health.v1.Health/Check")
    assert token.bypass("/clawmesh.ingest.v1.IngestService/Submit")
    assert not token.bypass("/clawmesh.memory.v1.MemoryService/Exchange")
