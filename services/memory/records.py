"""Plain value types of the memory stores, their limits, and three small codecs.

The stores' API speaks these (no protobuf or gRPC types); the servicer
converts them to and from ``clawmesh.memory.v1`` messages.

    limits = Limits(max_messages=200, session_ttl_s=30 * 86400)
    token = encode_page_token("acme", "s42")          # bound to tenant "acme"
    decode_page_token(token, "acme")                  # "s42"
    words("Café au LAIT!")                            # ["cafe", "au", "lait"]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clawmesh.shared.errors import InvalidArgument
from clawmesh.shared.tokens import estimate_tokens

if TYPE_CHECKING:
    from clawmesh.shared.settings import MemorySettings

_TOKEN_PREFIX = b"s2:"
_NS = 1_000_000_000


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
class Limits:
    """What a store enforces on write and when things expire (``MemorySettings``' values).

    ``max_messages`` and ``max_tokens`` bound a session: an append that goes over
    drops the session's oldest messages (counted as trimmed). A session idle for
    ``session_ttl_s`` expires (0: never); an idempotency key is remembered for
    ``idempotency_ttl_s`` after its append. A sweeper runs every
    ``sweep_interval_s`` (0: none), at most ``sweep_batch`` sessions per step.
    """

    max_messages: int = 200
    max_tokens: int = 200_000
    session_ttl_s: float = 0.0
    idempotency_ttl_s: float = 86_400.0
    sweep_interval_s: float = 0.0
    sweep_batch: int = 500

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_tokens < 1 or self.sweep_batch < 1:
            raise ValueError("max_messages, max_tokens and sweep_batch must be >= 1")
        if self.session_ttl_s < 0 or self.idempotency_ttl_s <= 0 or self.sweep_interval_s < 0:
            raise ValueError("TTLs and the sweep interval must be >= 0 (idempotency_ttl_s > 0)")

    @classmethod
    def from_settings(cls, s: MemorySettings) -> Limits:
        """The limits of the memory service's settings."""
        return cls(s.max_messages_per_session, s.max_tokens_per_session, s.session_ttl_s,
                   s.idempotency_ttl_s, s.sweep_interval_s, s.sweep_batch)

    @property
    def session_ttl_ns(self) -> int:
        return int(self.session_ttl_s * _NS)

    @property
    def idempotency_ttl_ns(self) -> int:
        return int(self.idempotency_ttl_s * _NS)

    def session_expired(self, updated_ns: int, now_ns: int) -> bool:
        ttl = self.session_ttl_ns
        return ttl > 0 and updated_ns + ttl <= now_ns

    def key_expired(self, created_ns: int, now_ns: int) -> bool:
        return created_ns + self.idempotency_ttl_ns <= now_ns


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
    incarnation, which changes when the session is deleted (or expires) and is
    created again (both 0 when there is no session): a cached history stays valid
    while the epoch is the same, and ``after_sequence=last_sequence`` fetches what is new.
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
    """Totals over one tenant's live sessions, and what its limits and TTL removed so far."""

    sessions: int
    messages: int
    content_bytes: int
    tokens: int
    trimmed_messages: int = 0  # dropped by the message or token limit of their session
    expired_sessions: int = 0  # removed after session_ttl_s idle
    expired_messages: int = 0  # the messages those sessions held


@dataclass(frozen=True)
class Expired:
    """What one sweep removed: idle sessions, their messages, old idempotency keys."""

    sessions: int = 0
    messages: int = 0
    keys: int = 0

    def __add__(self, other: Expired) -> Expired:
        return Expired(self.sessions + other.sessions, self.messages + other.messages,
                       self.keys + other.keys)


def message_tokens(message: Message) -> int:
    """The message's token count: the one given, else ``estimate_message_tokens``."""
    return message.token_count or estimate_message_tokens(message)


def estimate_message_tokens(message: Message) -> int:
    """``estimate_tokens`` over the content and the tool calls' names and arguments."""
    calls = "".join(c.name + c.arguments_json for c in message.tool_calls)
    return estimate_tokens(message.content + calls)


def _tenant_tag(tenant: str) -> bytes:
    return hashlib.blake2b(tenant.encode(), digest_size=6).hexdigest().encode()


def encode_page_token(tenant: str, after_session_id: str) -> str:
    """An opaque cursor after ``after_session_id``, usable by ``tenant`` only."""
    raw = _TOKEN_PREFIX + _tenant_tag(tenant) + b":" + after_session_id.encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, tenant: str) -> str:
    """The session id a page token continues after.

    InvalidArgument naming ``page_token`` when it is malformed or was handed to
    another tenant.
    """
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        if not raw.startswith(_TOKEN_PREFIX):
            raise ValueError("bad prefix")
        tag, sep, after = raw[len(_TOKEN_PREFIX) :].partition(b":")
        if not sep:
            raise ValueError("no tenant tag")
        session_id = after.decode()
    except (binascii.Error, ValueError):
        raise InvalidArgument("page_token", "malformed page token") from None
    if tag != _tenant_tag(tenant):
        raise InvalidArgument("page_token", "not a page token of this tenant")
    return session_id


_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """Search words of ``text``: runs of letters and digits, lower-cased, accents removed.

    Close to SQLite FTS5's ``unicode61 remove_diacritics 2`` tokenizer, so a query
    means the same on both backends: "Café" and "CAFE" are the word "cafe";
    punctuation and "_" separate words.
    """
    if text.isascii():  # nothing to decompose
        return _WORD.findall(text.lower())
    decomposed = unicodedata.normalize("NFD", text.lower())
    return _WORD.findall("".join(c for c in decomposed if not unicodedata.combining(c)))


def scope_token(tenant: str, session_id: str) -> str:
    """A one-word tag of (tenant, session) that the SQLite search index keys on."""
    digest = hashlib.blake2b(f"{tenant}\0{session_id}".encode(), digest_size=8).hexdigest()
    return "s" + digest
