"""Plain value types of the memory store, and its two small codecs.

The store's API speaks these (no protobuf or gRPC types); the servicer
converts them to and from ``clawmesh.memory.v1`` messages.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from clawmesh.shared.errors import InvalidArgument
from clawmesh.shared.tokens import estimate_tokens

_TOKEN_PREFIX = b"s1:"


@dataclass(frozen=True)
class ToolCall:
    """A tool the model asked to run (``arguments_json`` as the model produced it)."""

    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True)
class Message:
    """One chat message. ``created_ns``/``token_count`` of 0 are filled in on append."""

    role: int
    content: str
    name: str = ""
    created_ns: int = 0
    token_count: int = 0
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    sequence: int = 0  # assigned by the store; ignored on input


@dataclass(frozen=True)
class AppendResult:
    """Sequences of the appended messages; ``duplicate`` when a repeat of a stored key.

    ``session_epoch`` identifies the session's incarnation (see ``History``).
    """

    sequences: list[int]
    duplicate: bool
    session_epoch: int = 0


@dataclass(frozen=True)
class History:
    """Messages oldest first; ``total_messages`` stored, ``truncated`` when some left out.

    ``last_sequence`` is the session's newest sequence and ``session_epoch`` its
    incarnation, which changes when the session is deleted and created again
    (both 0 when there is no session): a cached history stays valid while the
    epoch is the same, and ``after_sequence=last_sequence`` fetches what is new.
    """

    messages: list[Message]
    total_messages: int
    truncated: bool
    last_sequence: int = 0
    session_epoch: int = 0


@dataclass(frozen=True)
class SessionInfo:
    """One session of a tenant, as listed."""

    session_id: str
    message_count: int
    token_count: int
    created_ns: int
    updated_ns: int


@dataclass(frozen=True)
class SessionPage:
    """A page of sessions; ``next_page_token`` is empty on the last page."""

    sessions: list[SessionInfo] = field(default_factory=list)
    next_page_token: str = ""


@dataclass(frozen=True)
class Stats:
    """Totals over one tenant's stored sessions."""

    sessions: int
    messages: int
    content_bytes: int
    tokens: int


def estimate_message_tokens(message: Message) -> int:
    """``estimate_tokens`` over the content and the tool calls' names and arguments."""
    calls = "".join(c.name + c.arguments_json for c in message.tool_calls)
    return estimate_tokens(message.content + calls)


def encode_page_token(after_session_id: str) -> str:
    return base64.urlsafe_b64encode(_TOKEN_PREFIX + after_session_id.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    """The session id a page token continues after; InvalidArgument when malformed."""
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        if not raw.startswith(_TOKEN_PREFIX):
            raise ValueError("bad prefix")
        return raw[len(_TOKEN_PREFIX) :].decode()
    except (binascii.Error, ValueError):
        raise InvalidArgument("page_token", "malformed page token") from None
