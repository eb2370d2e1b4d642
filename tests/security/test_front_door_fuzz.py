"""Hostile input against a running ingest (real grpc.aio servers, the mesh behind it in-process).

Arbitrary InboundMessages through every RPC shape, raw byte frames as request bodies and
arbitrary metadata: every call gets a status (INVALID_ARGUMENT naming the fields for
anything that decodes and is invalid; never INTERNAL for a decodable message), the server
stays up, and a bystander's concurrent calls all succeed. ``FUZZ_EXAMPLES`` sets the
examples per property (``make fuzz``).
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from clawmesh.ingest.v1 import ingest_pb2
from clawmesh.shared.security import Security, activated
from clawmesh.shared.settings import MeshSettings, SecuritySettings
from tests.inproc import inproc_mesh
from tests.security import front_door as fd
from tests.security.conftest import KEY_A, KEY_B, api_keys

TENANT = "acme"  # the tenant of KEY_A, the fuzzer's key
AUTH = (("authorization", f"Bearer {KEY_A}"),)
TALLY = fd.Tally()


class MeshThread:
    """The mesh on its own event loop in a thread, as a separate server would be."""

    def __init__(self, settings: MeshSettings) -> None:
        self.settings = settings
        self.ready = threading.Event()
        self.address = ""
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            with activated(Security(self.settings.security, "ingest")):
                mesh = inproc_mesh(self.settings, services=("memory", "provider", "routing", "ingest"))
                servers = await mesh.__aenter__()
            try:
                self.address = servers["ingest"].address
                self.ready.set()
                await self._stop.wait()
            finally:
                await mesh.__aexit__(None, None, None)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc
            self.ready.set()

    def start(self) -> MeshThread:
        self._thread.start()
        assert self.ready.wait(30) and self.error is None, self.error
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def front_door(tmp_path_factory):
    settings = MeshSettings(
        telemetry={"enabled": False}, use_uvloop=False,
        ingest={"port": 0}, routing={"port": 0}, provider={"port": 0}, metrics={"port": 0},
        memory={"port": 0, "data_dir": tmp_path_factory.mktemp("fuzz-memory")},
        security={"auth": "api_key", "api_keys": api_keys(), "max_concurrent_streams": 64},
    )
    mesh = MeshThread(settings).start()
    bystander = fd.Bystander(mesh.address, (("authorization", f"Bearer {KEY_B}"),)).start()
    channel = grpc.insecure_channel(mesh.address)
    yield channel, settings.ingest, bystander
    channel.close()
    bystander.stop()
    mesh.stop()


def _call(channel, kind: str, body: bytes, metadata=AUTH) -> tuple[grpc.StatusCode, str, object]:
    """Send ``body`` as the request of RPC shape ``kind``; (code, details, status detail)."""
    try:
        if kind == "Submit":
            channel.unary_unary(fd.SERVICE + "Submit")(body, metadata=metadata, timeout=fd.TIMEOUT_S)
        elif kind == "SubmitStream":
            for _ in channel.unary_stream(fd.SERVICE + "SubmitStream")(body, metadata=metadata,
                                                                          timeout=fd.TIMEOUT_S):
                pass
        else:  # Converse: the body is one frame of the stream; a per-message error comes in-band
            for raw in channel.stream_stream(fd.SERVICE + "Converse")(iter([body]), metadata=metadata,
                                                                        timeout=fd.TIMEOUT_S):
                response = ingest_pb2.ConverseResponse.FromString(raw)
                if response.HasField("error"):
                    status = fd.status_pb2.Status(code=response.error.code, message=response.error.message,
                                                  details=response.error.details)
                    return grpc.StatusCode(_code(response.error.code)), response.error.message, status
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", fd.status_of(exc)
    return grpc.StatusCode.OK, "", None


def _code(number: int):
    return next(c.value for c in grpc.StatusCode if c.value[0] == number)


SHAPES = st.sampled_from(["Submit", "SubmitStream", "Converse"])


@fd.FUZZ
@given(message=fd.inbound_messages(), kind=SHAPES, present=st.booleans() | st.just(True))
def test_fuzz_arbitrary_messages_get_the_right_status(front_door, message, kind, present):
    channel, limits, _ = front_door
    request = ingest_pb2.SubmitRequest(message=message) if present else ingest_pb2.SubmitRequest()
    code, details, status = _call(channel, kind, request.SerializeToString())
    TALLY.add(f"message {code.name}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in details:
        return  # over max_message_bytes: gRPC's own refusal, before any decoding
    fd.check(code, details, status, request, limits, TENANT)


@fd.FUZZ
@given(body=fd.frames, kind=SHAPES)
def test_fuzz_raw_frames_are_answered(front_door, body, kind):
    channel, limits, _ = front_door
    request = fd.decodes(body, kind)
    code, details, status = _call(channel, kind, body)
    TALLY.add(f"frame {'decodable' if request is not None else 'garbage'} {code.name}")
    fd.check(code, details, status, request, limits, TENANT)


@fd.FUZZ
@given(metadata=fd.headers)
def test_fuzz_arbitrary_metadata(front_door, metadata):
    channel, _, _ = front_door
    request = ingest_pb2.SubmitRequest(message=fd.common_pb2.InboundMessage(
        channel="web", sender="m", session_id="md", content="hi"))
    keys = {k for k, _ in metadata}
    full = tuple(metadata) if "authorization" in keys else (*AUTH, *metadata)
    code, details, _ = _call(channel, "Submit", request.SerializeToString(), full)
    TALLY.add(f"metadata {code.name}")
    assert code not in fd.NEVER, (code, details)
    size = sum(len(k) + len(v) + 32 for k, v in full)
    if size > 8192:  # security.max_metadata_bytes: gRPC refuses before any handler runs
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    elif code != grpc.StatusCode.OK:
        assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (code, details)


def test_the_server_is_up_and_bystanders_were_unaffected(front_door):
    channel, _, bystander = front_door
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    code, details, _ = _call(channel, "Submit", fd.VALID)
    assert code == grpc.StatusCode.OK, details
    bystander.stop()
    assert bystander.failures == [] and bystander.ok > 0, bystander.failures[:3]
    tried = TALLY.total()
    outcomes = dict(sorted(TALLY.counts.items()))
    print(f"\nfront door fuzz: {tried} calls, bystander {bystander.ok} OK; {outcomes}")
    assert tried >= 3 * fd.EXAMPLES * 0.5


@pytest.mark.parametrize("seconds, nanos", [(2**62, 0), (-1, 0), (10**12, 0), (0, -1),
                                            (1_700_000_000, 10**9)])
def test_out_of_range_sent_time_names_the_field(front_door, seconds, nanos):
    """Found by the fuzzer: a sent_time beyond 64-bit nanoseconds failed in memory (INTERNAL)."""
    channel, _, _ = front_door
    message = fd.common_pb2.InboundMessage(channel="web", sender="t", session_id="time", content="hi")
    message.sent_time.seconds, message.sent_time.nanos = seconds, nanos
    body = ingest_pb2.SubmitRequest(message=message).SerializeToString()
    code, details, status = _call(channel, "Submit", body)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert fd.bad_request_fields(status) == ["message.sent_time"]


def test_limits_are_server_options():
    security = Security(SecuritySettings(max_concurrent_streams=7, max_metadata_bytes=4096))
    options = dict(security.server_options())
    assert options == {"grpc.max_concurrent_streams": 7, "grpc.max_metadata_size": 4096,
                       "grpc.absolute_max_metadata_size": 4096}
