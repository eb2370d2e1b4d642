"""Every overlay renders with kustomize, and every rendered object is valid Kubernetes."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from tests.k8s.conftest import VARIANTS
from tests.k8s.kube import CRD_KINDS, K8S_VERSIONS, OVERLAYS, find, of_kind, workloads


def test_the_overlays_are_dev_and_prod():
    assert {"dev", "prod"} <= set(OVERLAYS), OVERLAYS


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_strictly(objects, variant, version):
    failures = []
    for obj in objects[variant]:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not failures, "\n".join(failures)


def test_the_validator_rejects_what_it_should(objects):
    """Guard: strict validation does catch an unknown field and a wrong type."""
    deployment = copy.deepcopy(find(objects["dev"], "Deployment", "ingest"))
    deployment["spec"]["replicaz"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    deployment = copy.deepcopy(find(objects["dev"], "Deployment", "ingest"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_the_service_monitor_scrapes_every_clawmesh_pod(objects):
    """The one CRD object: its selector picks Services that have the port it names, and those
    Services cover every ClawMesh workload."""
    objs = objects["prod"]
    (monitor,) = of_kind(objs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert set(monitor["spec"]) == {"selector", "endpoints"}, monitor["spec"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    services = [s for s in of_kind(objs, "Service")
                if selector.items() <= s["metadata"].get("labels", {}).items()]
    covered = set()
    for service in services:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}, service["metadata"]
        covered.add(service["spec"]["selector"]["app.kubernetes.io/component"])
    assert covered == set(workloads(objs)), covered
