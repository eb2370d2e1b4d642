"""Hostile input for the front door: hypothesis strategies and the oracle every answer must meet.

Used by the in-process fuzz suite (tests/security/test_front_door_fuzz.py) and the
process-level run (tests/system/test_security_processes.py). ``FUZZ_EXAMPLES`` sets how
many examples each property tries (default 100; ``make fuzz`` runs 2000).
"""

from __future__ import annotations

import collections
import os
import re
import threading
import time

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from clawmesh.common.v1 import common_pb2
from clawmesh.ingest.v1 import ingest_pb2
from clawmesh.services.ingest.validation import validate_inbound
from clawmesh.shared.errors import InvalidArgument, bad_request_fields
from clawmesh.shared.settings import IngestSettings

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 100)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])
SERVICE = "/clawmesh.ingest.v1.IngestService/"
TIMEOUT_S = 15.0  # an answer later than this counts as a hang
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
         grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DATA_LOSS}

# --- strategies -------------------------------------------------------------------------

chars = st.characters(exclude_categories=("Cs",))  # any unicode a str can carry as UTF-8
small = st.text(chars, max_size=40)
text = st.one_of(small, st.text(chars, max_size=400),
                 st.builds(lambda c, n: c * n, chars, st.integers(200, 40_000)),
                 st.sampled_from(["", " ", "\u3000\u2028", "\x00", "yes", "\U0001f980" * 70]))
attributes = st.one_of(
    st.dictionaries(small, small, max_size=6),
    st.builds(lambda n, v: {f"k{i}": v for i in range(n)}, st.integers(0, 4000),
              st.sampled_from(["", "v" * 2000])),
    st.builds(lambda k: {k: "x"}, st.builds(lambda c, n: c * n, chars, st.integers(200, 5000))),
)
int32 = st.integers(-(2**31), 2**31 - 1)
word = st.text(chars, min_size=1, max_size=40)  # a valid id: any unicode, short
FIELDS = ("tenant", "channel", "channel_message_id", "sender", "session_id", "content", "priority",
          "attributes", "idempotency_key", "sent_time")
# Per field: (a valid value, anything at all).
VALUES = {
    "tenant": (st.sampled_from(["", "acme"]), st.sampled_from(["globex"]) | small),
    "channel": (st.sampled_from(["telegram", "discord:guild-42"]) | word, text),
    "channel_message_id": (st.sampled_from(["", "42"]) | word, text),
    "sender": (word, text),
    "session_id": (st.sampled_from(["fuzz", "fuzz-2"]) | word, text),
    "content": (st.sampled_from(["hello", "yes"]) | word.filter(str.strip), text),
    "priority": (st.sampled_from(list(common_pb2.Priority.values())), int32),
    "attributes": (st.dictionaries(small, small, max_size=6), attributes),
    "idempotency_key": (st.sampled_from([""]) | word, text),
    "sent_time": (st.none() | st.tuples(st.integers(0, 2**33), st.integers(0, 999_999_999)),
                  st.tuples(st.integers(-(2**63), 2**63 - 1), int32)),
}


@st.composite
def inbound_messages(draw) -> common_pb2.InboundMessage:
    """A message whose fields are valid but for a few (often none), which may be anything."""
    hostile = draw(st.sets(st.sampled_from(FIELDS), max_size=3))
    value = {name: draw(VALUES[name][name in hostile]) for name in FIELDS}
    attrs, when = value.pop("attributes"), value.pop("sent_time")
    message = common_pb2.InboundMessage(**value)
    message.attributes.update(attrs)
    if when is not None:
        message.sent_time.seconds, message.sent_time.nanos = when
    return message


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for index, value in edits:
        if out:
            out[index % len(out)] = value
    return bytes(out)


VALID = ingest_pb2.SubmitRequest(message=common_pb2.InboundMessage(
    channel="telegram", sender="alice", session_id="fuzz", content="hello", channel_message_id="7",
    attributes={"thread": "t1"})).SerializeToString()
# Raw request bodies: random bytes, and valid requests with bytes changed (nearly valid ones).
frames = st.one_of(
    st.binary(max_size=512),
    st.builds(_mutate, st.just(VALID), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                 min_size=1, max_size=6)),
    st.builds(lambda head, tail: head + tail, st.just(VALID), st.binary(max_size=64)),
)
header_names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_."), min_size=1, max_size=30)
header_names = header_names.filter(
    lambda k: not k.startswith("grpc-") and not k.endswith("-bin") and k not in ("te", "content-type"))
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
headers = st.one_of(
    st.lists(st.tuples(header_names, header_values), max_size=8),
    st.builds(lambda n: [("x-big", "v" * n)], st.integers(1, 20_000)),
    st.lists(st.tuples(st.sampled_from(["authorization", "x-clawmesh-tenant", "x-clawmesh-priority",
                                        "x-clawmesh-request-id", "x-clawmesh-idempotency-key",
                                        "traceparent"]), header_values), max_size=4),
)

# --- the oracle --------------------------------------------------------------------------


REQUESTS = {"Submit": ingest_pb2.SubmitRequest, "SubmitStream": ingest_pb2.SubmitStreamRequest,
            "Converse": ingest_pb2.ConverseRequest}


def decodes(body: bytes, kind: str = "Submit"):
    """``body`` as the request of RPC ``kind`` (a Converse frame for Converse), or None."""
    try:
        return REQUESTS[kind].FromString(body)
    except DecodeError:
        return None


def expected_violations(request, limits: IngestSettings) -> list[str]:
    """The fields ingest must name for this request (empty: valid)."""
    try:
        validate_inbound(request.message, request.HasField("message"), limits)
    except InvalidArgument as exc:
        return _fields(v.field for v in exc.violations)
    return []


def _fields(names) -> list[str]:
    """Field names, sorted; ``attributes[<key>]`` as ``attributes[*]`` (which bad key is named
    first depends on the map's order, which serialization does not keep)."""
    return sorted(re.sub(r"attributes\[.*\]$", "attributes[*]", name, flags=re.S) for name in names)


def check(code: grpc.StatusCode, details: str, status: status_pb2.Status | None,
          request, limits: IngestSettings, tenant: str) -> None:
    """What any answer to ``request`` (None: its bytes did not decode) must be."""
    assert code not in NEVER, (code, details)
    if request is None:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert status is not None and bad_request_fields(status) == ["request"], details
        return
    violations = expected_violations(request, limits)
    if violations:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details, violations)
        named = _fields(bad_request_fields(status)) if status is not None else None
        assert named == violations, (details[:300], violations)
    elif request.message.tenant and request.message.tenant != tenant:
        assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)
    else:
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED), (code, details)


def status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None


class Tally:
    """Outcomes by label (counted from any thread)."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def add(self, label: str) -> None:
        with self.lock:
            self.counts[label] += 1

    def total(self, prefix: str = "") -> int:
        return sum(n for k, n in self.counts.items() if k.startswith(prefix))


class Bystander:
    """Another caller sending good messages the whole time: none of its calls may fail."""

    def __init__(self, target: str, metadata=(), credentials=None) -> None:
        self.target, self.metadata, self.credentials = target, tuple(metadata), credentials
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Bystander:
        self._thread.start()
        return self

    def _run(self) -> None:
        channel = (grpc.insecure_channel(self.target) if self.credentials is None
                   else grpc.secure_channel(self.target, self.credentials))
        submit = channel.unary_unary(SERVICE + "Submit",
                                     request_serializer=ingest_pb2.SubmitRequest.SerializeToString,
                                     response_deserializer=ingest_pb2.SubmitResponse.FromString)
        n = 0
        with channel:
            while not self._stop.is_set():
                n += 1
                message = common_pb2.InboundMessage(
                    channel="web", sender="bystander", session_id=f"by-{n % 5}", content=f"good message {n}",
                    channel_message_id=f"by-{n}")
                try:
                    reply = submit(ingest_pb2.SubmitRequest(message=message), metadata=self.metadata,
                                   timeout=TIMEOUT_S)
                    assert f"good message {n}" in reply.reply.content
                    self.ok += 1
                except (grpc.RpcError, AssertionError) as exc:
                    self.failures.append(repr(exc)[:300])
                time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_S + 5)
