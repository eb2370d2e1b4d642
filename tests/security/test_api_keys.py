"""API keys without gRPC: hashing, rotation, expiry on an injected clock, the keys file."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
import yaml
from pydantic import ValidationError

from clawmesh.shared.errors import Unauthenticated
from clawmesh.shared.security import KeyRing, KeyStore, SecurityError, hash_key, new_key
from clawmesh.shared.security.keys import INVALID, MISSING
from clawmesh.shared.settings import ApiKeySettings, SecuritySettings, load_settings
from tests.fakes import FakeClock
from tests.security.conftest import KEY_A, KEY_A_OLD, KEY_B, api_keys

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()


def store(keys=None, clock=None, **settings) -> KeyStore:
    security = SecuritySettings(auth="api_key", api_keys=api_keys() if keys is None else keys, **settings)
    return KeyStore(security, clock=clock or FakeClock(NOW))


def test_new_keys_are_random_and_hashes_stable():
    one, two = new_key(), new_key()
    assert one != two and one.startswith("cmk_") and len(one) > 40
    assert hash_key(one) == hash_key(one) != hash_key(two)
    assert hash_key("k") == "sha256:" + "8254c329a92850f6d539dd376f4816ee2764517da5e0235514af433164480d7a"
    peppered = hash_key("k", b"pepper")
    assert peppered.startswith("hmac-sha256:") and peppered[12:] != hash_key("k")[7:]


def test_the_tenant_comes_from_the_key():
    keys = store()
    assert keys.authenticate(f"Bearer {KEY_A}") == "acme"
    assert keys.authenticate(f"bearer  {KEY_B} ") == "globex"


@pytest.mark.parametrize("header, reason, message", [
    (None, "missing", MISSING), ("", "missing", MISSING),
    (f"Basic {KEY_A}", "malformed", INVALID), ("Bearer", "malformed", INVALID),
    ("Bearer " + "x" * 600, "malformed", INVALID),
    ("Bearer cmk_not-a-key", "unknown", INVALID), (f"Bearer {KEY_A}x", "unknown", INVALID),
])
def test_refusals_give_no_hint(header, reason, message):
    keys = store()
    with pytest.raises(Unauthenticated) as err:
        keys.authenticate(header)
    assert err.value.message == message
    assert "acme" not in message and "globex" not in message
    assert keys.refused[reason] == 1


def test_rotation_both_keys_work_until_the_old_one_expires():
    clock = FakeClock(NOW)
    keys = store(api_keys(old_not_after="2026-11-02T00:00:00Z"), clock)
    assert keys.authenticate(f"Bearer {KEY_A_OLD}") == "acme"
    assert keys.authenticate(f"Bearer {KEY_A}") == "acme"
    clock.advance(86400)  # not_after reached
    with pytest.raises(Unauthenticated) as err:
        keys.authenticate(f"Bearer {KEY_A_OLD}")
    assert err.value.message == INVALID and keys.refused["expired"] == 1
    assert keys.authenticate(f"Bearer {KEY_A}") == "acme"


def test_the_keys_file_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(api_keys()))
    ticks = FakeClock(0.0)
    keys = KeyStore(SecuritySettings(auth="api_key", api_keys_file=path, keys_reload_s=5),
                    clock=FakeClock(NOW), monotonic=ticks)
    assert keys.authenticate(f"Bearer {KEY_A_OLD}") == "acme"
    # Revoke the old key (a mounted Secret is replaced, not edited in place).
    revoked = api_keys()
    revoked["acme"] = revoked["acme"][:1]
    new = tmp_path / "keys.new"
    new.write_text(yaml.safe_dump(revoked))
    os.replace(new, path)
    assert keys.authenticate(f"Bearer {KEY_A_OLD}") == "acme"  # not checked again yet
    ticks.advance(5)
    with pytest.raises(Unauthenticated):
        keys.authenticate(f"Bearer {KEY_A_OLD}")
    assert keys.authenticate(f"Bearer {KEY_A}") == "acme"
    # A broken file keeps the keys in use.
    path.write_text("acme: [{hash: nope}]")
    ticks.advance(5)
    assert keys.authenticate(f"Bearer {KEY_B}") == "globex"
    assert keys.reload() is False


def test_pepper_from_a_file(tmp_path):
    pepper = tmp_path / "pepper"
    pepper.write_text("s3cret\n")
    keys = store({"acme": [{"hash": hash_key(KEY_A, b"s3cret")}]}, key_pepper_file=pepper)
    assert keys.authenticate(f"Bearer {KEY_A}") == "acme"
    with pytest.raises(SecurityError, match="sha256 hash but a pepper is configured"):
        store(key_pepper_file=pepper)


def test_inconsistent_keys_are_refused_at_start(tmp_path):
    with pytest.raises(SecurityError, match="listed twice"):
        KeyRing({"a": [ApiKeySettings(hash=hash_key("k"))], "b": [ApiKeySettings(hash=hash_key("k"))]})
    with pytest.raises(SecurityError, match="cannot read keys file"):
        KeyStore(SecuritySettings(auth="api_key", api_keys_file=tmp_path / "absent.yaml"))


def test_settings_shape_and_guards():
    env = {"CLAWMESH_SECURITY__AUTH": "api_key",
           "CLAWMESH_SECURITY__API_KEYS": json.dumps(
               {"acme": [{"hash": hash_key(KEY_A), "not_after": "2027-01-01T00:00:00Z"}]}),
           "CLAWMESH_SECURITY__MESH_TOKEN": "t0ken"}
    settings = load_settings(env)
    expires = settings.security.api_keys["acme"][0].expires()
    assert expires == dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()
    assert "t0ken" not in settings.model_dump_json()  # secrets never printed by `config check --show`
    with pytest.raises(ValidationError, match="auth is dev"):
        SecuritySettings(api_keys=api_keys())
    with pytest.raises(ValidationError, match="no api_keys"):
        SecuritySettings(auth="api_key")
    with pytest.raises(ValidationError, match="hash"):
        ApiKeySettings(hash="md5:abc")
