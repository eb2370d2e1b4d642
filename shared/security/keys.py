"""API keys at the edge: issued at random, stored only as hashes, the tenant derived from the key.

    key = new_key()                                   # "cmk_…": give it to the tenant once
    entry = {"hash": hash_key(key)}                   # what the settings / Secret file keep
    store = KeyStore(settings.security)
    tenant = store.authenticate("Bearer " + key)      # or raises Unauthenticated

Why a fast hash: the keys are 256-bit random tokens, never passwords, so nobody can guess one
from its hash, however fast the hash is; a slow KDF (scrypt, argon2) would only cost CPU on
every call. SHA-256 by default; with a pepper (``security.key_pepper``, a secret kept apart
from the hashes) HMAC-SHA256, so a leaked hash file alone cannot even confirm a guess.

A presented key is hashed and looked up by its digest; the stored digest is then compared
with ``hmac.compare_digest``. The lookup cannot leak a stored hash through timing: an
attacker would need a key whose digest is close to a stored one, i.e. a SHA-256 preimage.

A tenant has a list of keys, each with an optional ``not_after``: a rotation adds the new
key, clients move over, then the old key is removed or expires — both work meanwhile.
The keys file (a mounted Kubernetes Secret) is re-read when it changes, at most every
``keys_reload_s``; a file that does not parse keeps the keys in use (logged). Keys are
never logged: only the label of a key, or the first 8 hex digits of its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from clawmesh.shared.errors import Unauthenticated
from clawmesh.shared.settings import ApiKeySettings, SecuritySettings

log = logging.getLogger(__name__)

KEY_PREFIX = "cmk_"
MAX_KEY_CHARS = 512  # longer is never a key of ours: refused without hashing megabytes
MISSING = "missing API key: send the metadata `authorization: Bearer <key>`"
INVALID = "invalid API key"  # unknown, revoked or expired alike: no hint which

_TENANT_KEYS = TypeAdapter(dict[str, list[ApiKeySettings]])


class SecurityError(ValueError):
    """Keys, a pepper or certificates that cannot be used; the message says which and why."""


def new_key() -> str:
    """A fresh API key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str, pepper: bytes = b"") -> str:
    """The stored form of ``key``: ``sha256:<hex>``, or ``hmac-sha256:<hex>`` with a pepper."""
    if pepper:
        return "hmac-sha256:" + hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def read_secret(value: str, path: Path | None) -> str:
    """A secret given inline or as a file (trailing newline dropped)."""
    if path is None:
        return value
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecurityError(f"{path}: cannot read secret: {exc.strerror}") from None


def pepper_of(settings: SecuritySettings) -> bytes:
    return read_secret(settings.key_pepper.get_secret_value(), settings.key_pepper_file).encode()


@dataclass(frozen=True, slots=True)
class Entry:
    tenant: str
    digest: bytes
    not_after: float | None  # epoch seconds
    label: str


class KeyRing:
    """Every valid key's digest, by digest; immutable (a reload builds a new ring)."""

    def __init__(self, tenants: Mapping[str, Sequence[ApiKeySettings]], pepper: bytes = b"") -> None:
        self.pepper = pepper
        self.scheme = "hmac-sha256" if pepper else "sha256"
        self._by_digest: dict[bytes, Entry] = {}
        for tenant, keys in tenants.items():
            if not tenant or len(tenant) > 256:
                raise SecurityError(f"tenant name {tenant[:40]!r}: 1 to 256 characters")
            for key in keys:
                scheme, _, hex_digest = key.hash.partition(":")
                name = key.label or hex_digest[:8]
                if scheme != self.scheme:
                    raise SecurityError(
                        f"key {name!r} of tenant {tenant!r} is a {scheme} hash but "
                        f"{'a pepper is' if pepper else 'no pepper is'} configured: hash it again "
                        "with `clawmesh keys hash`")
                digest = bytes.fromhex(hex_digest)
                if digest in self._by_digest:
                    other = self._by_digest[digest].tenant
                    raise SecurityError(f"key {name!r} is listed twice (tenants {other!r} and {tenant!r})")
                self._by_digest[digest] = Entry(tenant, digest, key.expires(), key.label)

    def __len__(self) -> int:
        return len(self._by_digest)

    def digest(self, key: str) -> bytes:
        data = key.encode()
        if self.pepper:
            return hmac.new(self.pepper, data, hashlib.sha256).digest()
        return hashlib.sha256(data).digest()

    def find(self, key: str, now: float) -> tuple[Entry | None, str]:
        """The key's entry, or None and why (``unknown`` / ``expired``)."""
        digest = self.digest(key)
        entry = self._by_digest.get(digest)
        if entry is None or not hmac.compare_digest(entry.digest, digest):
            return None, "unknown"
        if entry.not_after is not None and now >= entry.not_after:
            return None, "expired"
        return entry, ""


def parse_keys_file(path: Path) -> dict[str, list[ApiKeySettings]]:
    """A keys file: ``{tenant: [{hash, not_after?, label?}, ...]}`` in YAML (or JSON)."""
    try:
        tree = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return _TENANT_KEYS.validate_python(tree)
    except OSError as exc:
        raise SecurityError(f"{path}: cannot read keys file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SecurityError(f"{path}: not YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SecurityError(f"{path}: {problems}") from None


def _signature(path: Path | None):
    if path is None:
        return None
    try:
        st = os.stat(path)  # follows the symlinks a mounted Secret swaps on update
    except OSError:
        return "missing"
    return st.st_ino, st.st_mtime_ns, st.st_size


class KeyStore:
    """The edge's keys: inline settings + the keys file, re-read when the file changes.

    ``clock`` (epoch seconds) decides expiry; ``monotonic`` paces the file checks.
    """

    def __init__(self, settings: SecuritySettings, clock=time.time, monotonic=time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self.pepper = pepper_of(settings)
        self.refused = {"missing": 0, "malformed": 0, "unknown": 0, "expired": 0}
        self._file_sig = _signature(settings.api_keys_file)
        self.ring = self._build()  # a bad file at start stops the service
        self._next_check = monotonic() + settings.keys_reload_s

    def _build(self) -> KeyRing:
        tenants: dict[str, list[ApiKeySettings]] = {t: list(k) for t, k in self.settings.api_keys.items()}
        if self.settings.api_keys_file is not None:
            for tenant, keys in parse_keys_file(self.settings.api_keys_file).items():
                tenants.setdefault(tenant, []).extend(keys)
        return KeyRing(tenants, self.pepper)

    def reload(self) -> bool:
        """Re-read the keys file now; a bad one keeps the keys in use (logged). True: replaced."""
        self._file_sig = _signature(self.settings.api_keys_file)
        try:
            ring = self._build()
        except SecurityError as exc:
            log.error("api keys not reloaded; keeping the keys in use", extra={"error": str(exc)})
            return False
        self.ring = ring
        log.info("api keys loaded", extra={"keys": len(ring), "file": str(self.settings.api_keys_file)})
        return True

    def _maybe_reload(self) -> None:
        now = self.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.settings.keys_reload_s
        if _signature(self.settings.api_keys_file) != self._file_sig:
            self.reload()

    def authenticate(self, authorization: str | None) -> str:
        """The tenant of the key in an ``authorization: Bearer <key>`` value, or Unauthenticated."""
        if self.settings.api_keys_file is not None:
            self._maybe_reload()
        if not authorization:
            self.refused["missing"] += 1
            raise Unauthenticated(MISSING)
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or len(key) > MAX_KEY_CHARS:
            self.refused["malformed"] += 1
            raise Unauthenticated(INVALID)
        entry, why = self.ring.find(key, self.clock())
        if entry is None:
            self.refused[why] += 1
            raise Unauthenticated(INVALID)
        return entry.tenant
