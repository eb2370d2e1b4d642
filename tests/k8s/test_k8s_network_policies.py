"""The NetworkPolicies allow every connection the code makes, and no other.

The expected edges come from the code, not from a list kept by hand: each services/<svc>/main.py
builds its clients as ``pool.client(XClient, settings.<callee>.target())``; the launcher makes
every service but metrics export OTLP to ``settings.metrics.target()``; a service with a
``redis_url`` in its rendered settings (or ingest with a Redis policy backend) talks to Redis;
a provider backend at an https:// URL is called over the internet. Plus the front door (anyone
may call ingest), Prometheus scraping :9464, and DNS. Everything else must be denied.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from clawmesh.services.registry import NAMES
from clawmesh.shared.policy import load_policy
from clawmesh.shared.settings import MeshSettings
from tests.conftest import ROOT
from tests.k8s.conftest import VARIANTS
from tests.k8s.kube import workloads
from tests.k8s.netpol import Actor, allowed, allowed_edges, cluster_actors, outside_actors
from tests.k8s.test_k8s_manifests import mesh_settings, mounted_file

DEFAULTS = MeshSettings()
COLLECTOR_PORT = 4317
SCRAPE_PORT = 9464


def client_edges(services_dir: Path = ROOT / "services") -> set[tuple[str, str]]:
    """(caller, callee) for every ``pool.client(X, settings.<callee>.target())`` in a main.py."""
    edges = set()
    for main in sorted(services_dir.glob("*/main.py")):
        for node in ast.walk(ast.parse(main.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "client" and len(node.args) == 2):
                continue
            target = node.args[1]
            assert (isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute)
                    and target.func.attr == "target" and isinstance(target.func.value, ast.Attribute)), \
                f"{main}:{node.lineno}: a client whose target is not settings.<service>.target()"
            edges.add((main.parent.name, target.func.value.attr))
    return edges


def test_the_call_graph_is_read_from_the_code():
    assert client_edges() == {("ingest", "routing"), ("routing", "memory"), ("routing", "provider")}
    runner = (ROOT / "launcher" / "runner.py").read_text()
    assert 'if settings.telemetry.enabled and name != "metrics":' in runner
    assert "endpoint=settings.metrics.target()" in runner  # OTLP: every service but metrics


def redis_users(objs: list[dict], tmp_path) -> set[str]:
    """Services whose rendered settings name a Redis (any ``redis_url``), and ingest when its
    policy keeps state in Redis."""
    users = set()
    for name in NAMES:
        settings, env = mesh_settings(objs, name, tmp_path)
        if _has_redis(settings.server(name).model_dump()):
            users.add(name)
    _, env = mesh_settings(objs, "ingest", tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(mounted_file(objs, "ingest", env["CLAWMESH_INGEST__POLICY_FILE"]))
    if load_policy(policy).backend.kind == "redis":
        users.add("ingest")
    return users


def _has_redis(tree) -> bool:
    if isinstance(tree, dict):
        return any((k == "redis_url" and v) or _has_redis(v) for k, v in tree.items())
    if isinstance(tree, list):
        return any(_has_redis(v) for v in tree)
    return False


def expected_edges(objs: list[dict], tmp_path) -> set[tuple[str, str, str, int]]:
    pods = {a.name for a in cluster_actors(objs) if a.name not in {o.name for o in outside_actors()}}
    port = {name: DEFAULTS.server(name).port for name in NAMES}
    edges = {(a, b, "TCP", port[b]) for a, b in client_edges()}
    exporters = set(NAMES) - {"metrics"}
    if "otel-collector" in pods:
        edges |= {(e, "otel-collector", "TCP", COLLECTOR_PORT) for e in exporters}
        edges.add(("otel-collector", "metrics", "TCP", port["metrics"]))
    else:
        edges |= {(e, "metrics", "TCP", port["metrics"]) for e in exporters}
    redis = "redis" if "redis" in pods else "redis-external"
    edges |= {(user, redis, "TCP", 6379) for user in redis_users(objs, tmp_path)}
    provider, _ = mesh_settings(objs, "provider", tmp_path)
    if any(getattr(b, "base_url", "").startswith("https://")
           for b in provider.provider.backend_configs().values()):
        edges.add(("provider", "internet", "TCP", 443))
    edges |= {(o.name, "ingest", "TCP", port["ingest"]) for o in outside_actors()}  # the front door
    edges |= {("prometheus", name, "TCP", SCRAPE_PORT) for name in workloads(objs)}
    edges |= {(pod, "kube-dns", proto, 53) for pod in pods for proto in ("UDP", "TCP")}
    return edges


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_policies_allow_exactly_the_call_graph(objects, variant, tmp_path):
    objs = objects[variant]
    actors = cluster_actors(objs)
    ours = {a.name for a in actors} - {o.name for o in outside_actors()}
    actual = {e for e in allowed_edges(objs, actors) if e[0] in ours or e[1] in ours}
    expected = expected_edges(objs, tmp_path)
    assert not expected - actual, f"needed but denied: {sorted(expected - actual)}"
    assert not actual - expected, f"allowed but never used: {sorted(actual - expected)}"


def test_the_evaluator_denies_what_no_policy_allows():
    """Guard against a vacuous pass: default deny isolates, a rule opens one port only."""
    a = Actor("a", "ns", {"app": "a"}, "10.0.0.1", (("x", "TCP", 1),))
    b = Actor("b", "ns", {"app": "b"}, "10.0.0.2", (("grpc", "TCP", 2), ("other", "TCP", 3)))
    deny = {"kind": "NetworkPolicy", "metadata": {"namespace": "ns"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
    assert allowed([], a, b, "TCP", 2)
    assert not allowed([deny], a, b, "TCP", 2)
    open_b = {"kind": "NetworkPolicy", "metadata": {"namespace": "ns"}, "spec": {
        "podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": "grpc"}]}]}}
    a_out = {"kind": "NetworkPolicy", "metadata": {"namespace": "ns"}, "spec": {
        "podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}}
    assert not allowed([deny, open_b], a, b, "TCP", 2)  # a's egress still denied
    assert allowed([deny, open_b, a_out], a, b, "TCP", 2)
    assert not allowed([deny, open_b, a_out], a, b, "TCP", 3)
    assert not allowed([deny, open_b, a_out], b, a, "TCP", 1)
