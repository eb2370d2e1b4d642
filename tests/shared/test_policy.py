"""The edge policy file: strict, errors name the file and the key."""

import pytest

from clawmesh.shared.policy import EdgePolicy, PolicyError, load_policy


def write(tmp_path, text):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    policy = load_policy(None)
    assert policy == EdgePolicy()
    assert policy.backend.kind == "memory" and policy.dedup.enforce and policy.rate_limits.rules == []


def test_a_full_file_loads(tmp_path):
    policy = load_policy(write(tmp_path, """
backend: {kind: redis, redis_url: "redis://127.0.0.1:6379/0", on_error: fail_closed}
dedup: {strategy: combined, ttl_s: 60, enforce: false}
rate_limits:
  rules:
    - match: {tenant: "*", priority: normal}
      limits: [{name: burst, rate: 1, burst: 5}, {name: minute, rate: 30, per: minute}]
admission: {initial_limit: 8, min_limit: 2, max_limit: 16, max_queue: 4}
"""))
    assert policy.backend.on_error == "fail_closed" and not policy.dedup.enforce
    assert [lim.name for lim in policy.rate_limits.rules[0].limits] == ["burst", "minute"]


@pytest.mark.parametrize("text, where", [
    ("dedup: {ttl: 5}", "dedup.ttl: Extra inputs are not permitted"),
    ("dedup: {ttl_s: -1}", "dedup.ttl_s"),
    ("backend: {kind: redis}", "backend: Value error, redis_url is required"),
    ("rate_limits: {rules: [{match: {color: red}, limits: [{name: a, rate: 1}]}]}",
     "rate_limits.rules.0: Value error, unknown descriptor key(s) ['color']"),
    ("rate_limits: {rules: [{match: {tenant: '*'}, limits: [{name: a, rate: 1, per: week}]}]}",
     "rate_limits.rules.0.limits.0.per"),
    ("admission: {initial_limit: 1, min_limit: 2}", "admission: Value error, need min_limit"),
    ("- a list", "top level must be a mapping"),
])
def test_errors_name_the_file_and_the_key(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(path) in str(err.value) and where in str(err.value), str(err.value)
