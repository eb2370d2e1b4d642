"""Validation of inbound messages: every violation named, all reported at once."""

from __future__ import annotations

from clawmesh.common.v1 import common_pb2
from clawmesh.shared.errors import FieldViolation, InvalidArgument
from clawmesh.shared.settings import IngestSettings

KNOWN_PRIORITIES = frozenset(common_pb2.Priority.values())
MAX_ATTRIBUTE_VALUE_CHARS = 1024
# sent_time is stored as nanoseconds since the epoch in 64 bits: 1970 up to April 2262.
MAX_SENT_SECONDS = (2**63 - 1) // 1_000_000_000 - 1


def validate_inbound(message: common_pb2.InboundMessage, present: bool,
                     limits: IngestSettings, prefix: str = "message") -> None:
    """Raise InvalidArgument naming every bad field of ``message``."""
    if not present:
        raise InvalidArgument(prefix, "is required")
    problems: list[FieldViolation] = []

    def bad(name: str, description: str) -> None:
        problems.append(FieldViolation(f"{prefix}.{name}", description))

    for name in ("session_id", "channel", "sender"):
        value = getattr(message, name)
        if not value:
            bad(name, "is required")
        elif len(value) > limits.max_id_chars:
            bad(name, f"is {len(value)} characters; at most {limits.max_id_chars} allowed")
    for name in ("tenant", "channel_message_id", "idempotency_key"):
        value = getattr(message, name)
        if len(value) > limits.max_id_chars:
            bad(name, f"is {len(value)} characters; at most {limits.max_id_chars} allowed")
    if not message.content.strip():
        bad("content", "must not be empty")
    else:
        size = len(message.content.encode("utf-8"))
        if size > limits.max_content_bytes:
            bad("content", f"is {size} bytes; at most {limits.max_content_bytes} allowed")
    if message.priority not in KNOWN_PRIORITIES:
        bad("priority", f"unknown value {message.priority}; expected one of "
            + ", ".join(common_pb2.Priority.keys()))
    if len(message.attributes) > limits.max_attributes:
        bad("attributes", f"has {len(message.attributes)} entries; at most "
            f"{limits.max_attributes} allowed")
    for key, value in message.attributes.items():
        if len(key) > limits.max_id_chars or len(value) > MAX_ATTRIBUTE_VALUE_CHARS:
            bad(f"attributes[{key[:32]!r}]", "key or value too long")
            break
    if message.HasField("sent_time"):
        sent = message.sent_time
        if not 0 <= sent.seconds <= MAX_SENT_SECONDS or not 0 <= sent.nanos < 1_000_000_000:
            bad("sent_time", "must be a time between 1970 and 2262")
    if problems:
        raise InvalidArgument(problems)
