"""The Grafana dashboard asks only for series the services really export.

The whole mesh runs in process with one RpcStats (rate limits and breakers on, so every gauge
group exists), carries one message, and is scraped through shared/prometheus.py; each
metric a panel queries, and each label it groups by, must be in that scrape (or be one of the
labels Prometheus adds to every target).
"""

from __future__ import annotations

import json
import re

import grpc
from prometheus_client.parser import text_string_to_metric_families

from clawmesh.common.v1 import common_pb2
from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.shared.prometheus import start_endpoint
from clawmesh.shared.rpcstats import RpcStats
from tests.inproc import inproc_mesh
from tests.k8s.kube import K8S

DASHBOARD = K8S / "grafana" / "clawmesh-dashboard.json"
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}
POLICY = """\
rate_limits:
  rules:
    - match: {tenant: "*"}
      limits: [{name: tenant-second, rate: 100, per: second}]
"""


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


async def scraped_series(settings, tmp_path) -> dict[str, set[str]]:
    """Sample name -> label names, from a mesh that has carried one message."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings.ingest.policy_file = policy
    settings.breaker.enabled = True
    stats = RpcStats()
    async with inproc_mesh(settings, stats) as servers:
        async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
            message = common_pb2.InboundMessage(session_id="d1", channel="web", sender="u1", content="hi",
                                                channel_message_id="m1")
            await ingest_pb2_grpc.IngestServiceStub(channel).Submit(
                ingest_pb2.SubmitRequest(message=message), timeout=10)
        endpoint = await start_endpoint(stats, "ingest", "127.0.0.1", 0)
        try:
            body, _ = await endpoint.render()
        finally:
            await endpoint.close()
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


async def test_every_panel_queries_exported_series(settings, tmp_path):
    series = await scraped_series(settings, tmp_path)
    exprs = queries()
    assert len(exprs) >= 10
    for expr in exprs:
        selectors = re.findall(r"\b([a-z_:][a-z0-9_:]*)\{", expr)
        assert selectors, f"no metric selector in {expr!r}"
        for name in selectors:
            assert name in series, f"{name} (in {expr!r}) is not exported; exported: {sorted(series)}"
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert label == "le" or label in TARGET_LABELS or any(
                    label in series[name] for name in selectors), (label, expr)


def test_the_dashboard_is_importable_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "ClawMesh"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for expr in queries():
        assert set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"} <= variables, expr
