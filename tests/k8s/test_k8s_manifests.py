"""The manifests agree with the code: gRPC health names, ports, settings, drain timing,
hardening, and what each overlay promises (replicas, autoscaling, scraping, secrets)."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from clawmesh.services.registry import NAMES, by_name
from clawmesh.shared.policy import load_policy
from clawmesh.shared.settings import MeshSettings, load_settings
from tests.conftest import ROOT
from tests.k8s.conftest import VARIANTS
from tests.k8s.kube import config_map, container, find, of_kind, workloads

DEFAULTS = MeshSettings()
STATELESS = ("ingest", "routing", "provider")
METRICS_PORT = 9464
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def mesh_settings(objs: list[dict], service: str, tmp_path):
    """The settings `clawmesh serve <service>` loads in its pod: the env ConfigMap, the
    container's own env, and the settings file from the ConfigMap it mounts."""
    main = container(workloads(objs)[service])
    env = dict(config_map(objs, "clawmesh-env")["data"])
    env.update({e["name"]: e["value"] for e in main.get("env", []) if "value" in e})
    config = tmp_path / "clawmesh.yaml"
    config.write_text(mounted_file(objs, service, env["CLAWMESH_CONFIG"]))
    return load_settings({**env, "CLAWMESH_CONFIG": str(config)}), env


def mounted_file(objs: list[dict], service: str, path: str) -> str:
    """The text of ``path`` in ``service``'s container: a ConfigMap key under a mount."""
    workload = workloads(objs)[service]
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    for mount in container(workload)["volumeMounts"]:
        if path.startswith(mount["mountPath"] + "/"):
            name = volumes[mount["name"]]["configMap"]["name"]
            data = next(o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"] == name)["data"]
            return data[path.removeprefix(mount["mountPath"] + "/")]
    raise AssertionError(f"{path} is not mounted in {service}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_service_runs_once_with_probes_on_its_grpc_health_name(objects, variant, tmp_path):
    pods = workloads(objects[variant])
    assert set(pods) == set(NAMES), set(pods)
    for name, workload in pods.items():
        main = container(workload)
        assert main["args"] == [name], main["args"]
        settings, _ = mesh_settings(objects[variant], name, tmp_path)
        # With TLS the kubelet probes the plaintext health-only port.
        port = settings.security.health_port or DEFAULTS.server(name).port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # Native gRPC probes, on the service's own name from the registry: health turns
            # NOT_SERVING for it as soon as a drain starts.
            assert main[probe]["grpc"] == {"port": port, "service": by_name(name).grpc_name}, (name, probe)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ports_services_and_addresses_match_the_settings(objects, variant, tmp_path):
    objs = objects[variant]
    for name in NAMES:
        settings, env = mesh_settings(objs, name, tmp_path)
        port = DEFAULTS.server(name).port
        main = container(workloads(objs)[name])
        assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
            "grpc": port, "http-metrics": METRICS_PORT}, name
        own = settings.server(name)
        assert (own.host, own.port, own.prometheus_port) == ("0.0.0.0", port, METRICS_PORT), name
        service = find(objs, "Service", name)
        assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
            "grpc": (port, "grpc"), "http-metrics": (METRICS_PORT, "http-metrics")}, name
        # Inside the mesh, callers resolve every pod (headless); only ingest has a virtual IP.
        assert (service["spec"].get("clusterIP") == "None") == (name != "ingest"), name
        target = env.get(f"CLAWMESH_{name.upper()}__ADDRESS")
        if variant.endswith("otel-collector") and name == "metrics":
            assert target == "dns:///otel-collector:4317"
            continue
        assert target == f"dns:///{name}:{port}", (name, target)
        assert settings.server(name).target() == target


@pytest.mark.parametrize("variant", VARIANTS)
def test_settings_files_and_policies_validate(objects, variant, tmp_path):
    objs = objects[variant]
    for name in NAMES:
        mesh_settings(objs, name, tmp_path)  # load_settings raises on any bad value
    settings, env = mesh_settings(objs, "ingest", tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(mounted_file(objs, "ingest", env["CLAWMESH_INGEST__POLICY_FILE"]))
    assert load_policy(policy).backend.kind == "redis"  # shared by every ingest replica


def test_dev_uses_the_mock_and_prod_a_real_backend_with_its_key_from_a_secret(objects, tmp_path):
    dev, _ = mesh_settings(objects["dev"], "provider", tmp_path)
    assert {b.kind for b in dev.provider.backend_configs().values()} == {"mock"}
    prod, _ = mesh_settings(objects["prod"], "provider", tmp_path)
    backend = prod.provider.backend_configs()[prod.provider.default_backend]
    assert backend.kind == "openai" and backend.base_url.startswith("https://")
    routing, _ = mesh_settings(objects["prod"], "routing", tmp_path)
    assert routing.routing.default_backend == prod.provider.default_backend
    env = {e["name"]: e for e in container(workloads(objects["prod"])["provider"])["env"]}
    assert env[backend.api_key_env]["valueFrom"]["secretKeyRef"]["name"] == "clawmesh-llm"
    for variant in VARIANTS:  # referenced, never written into a manifest
        assert not of_kind(objects[variant], "Secret"), variant


@pytest.mark.parametrize("variant", VARIANTS)
def test_termination_outlasts_the_prestop_pause_and_the_drain(objects, variant, tmp_path):
    for name, workload in workloads(objects[variant]).items():
        settings, _ = mesh_settings(objects[variant], name, tmp_path)
        command = container(workload)["lifecycle"]["preStop"]["exec"]["command"]
        pause = float(re.fullmatch(r"import time; time\.sleep\((\d+(?:\.\d+)?)\)", command[2])[1])
        assert command[:2] == ["python", "-c"] and pause >= 3, command
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # + 5 s for the closers (final OTLP export, span flush, store close) after the drain.
        assert grace >= pause + settings.server(name).grace_period_s + 5, (name, grace)


def hardened(workload: dict) -> list[str]:
    """What a pod template lacks of the hardening every pod here must have."""
    spec = workload["spec"]["template"]["spec"]
    pod = spec.get("securityContext", {})
    problems = []
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken")
    if not (pod.get("runAsNonRoot") and pod.get("runAsUser", 0) >= 10000):
        problems.append("runAsNonRoot / runAsUser")
    if pod.get("seccompProfile") != {"type": "RuntimeDefault"}:
        problems.append("seccompProfile")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                and sc.get("capabilities") == {"drop": ["ALL"]}):
            problems.append(f"{c['name']}: container securityContext")
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            if set(resources.get(kind, {})) != {"cpu", "memory"}:
                problems.append(f"{c['name']}: resources.{kind}")
    return problems


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_is_hardened(objects, variant):
    for workload in of_kind(objects[variant], "Deployment", "StatefulSet"):
        assert not hardened(workload), (workload["metadata"]["name"], hardened(workload))
    for name, workload in workloads(objects[variant]).items():
        mounts = {m["mountPath"]: m["name"] for m in container(workload)["volumeMounts"]}
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], name  # writable /tmp, read-only root


def test_memory_keeps_its_sqlite_on_a_persistent_volume(objects, tmp_path):
    for variant in VARIANTS:
        memory = workloads(objects[variant])["memory"]
        assert memory["kind"] == "StatefulSet" and memory["spec"]["replicas"] == 1
        assert memory["spec"]["serviceName"] == "memory"
        settings, _ = mesh_settings(objects[variant], "memory", tmp_path)
        mounts = {m["mountPath"]: m["name"] for m in container(memory)["volumeMounts"]}
        claims = {t["metadata"]["name"] for t in memory["spec"]["volumeClaimTemplates"]}
        assert mounts[str(settings.memory.data_dir)] in claims


@pytest.mark.parametrize("variant", VARIANTS)
def test_stateless_services_have_budgets_and_spread(objects, variant):
    objs = objects[variant]
    pods = workloads(objs)
    budgets = {b["metadata"]["name"]: b for b in of_kind(objs, "PodDisruptionBudget")}
    assert set(budgets) == set(STATELESS), set(budgets)
    for name in STATELESS:
        labels = pods[name]["spec"]["template"]["metadata"]["labels"]
        assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert budgets[name]["spec"]["maxUnavailable"] == 1  # never blocks a drain of 1 replica
        spread = pods[name]["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {s["topologyKey"] for s in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        for constraint in spread:
            assert "app.kubernetes.io/component" in constraint["matchLabelKeys"]


def test_dev_runs_one_replica_of_everything(objects):
    for workload in of_kind(objects["dev"], "Deployment", "StatefulSet"):
        assert workload["spec"]["replicas"] == 1, workload["metadata"]["name"]
    assert not of_kind(objects["dev"], "HorizontalPodAutoscaler")


def test_prod_autoscales_the_stateless_services_on_cpu(objects):
    objs = objects["prod"]
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objs, "HorizontalPodAutoscaler")}
    assert set(hpas) == set(STATELESS)
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        # The HPA owns the count: a replicas field would reset it on every apply.
        assert "replicas" not in find(objs, "Deployment", name)["spec"], name
        assert container(find(objs, "Deployment", name))["resources"]["requests"]["cpu"]
    assert workloads(objs)["metrics"]["spec"]["replicas"] == 1  # figures in memory: one replica


def test_dev_has_scrape_annotations_and_prod_a_service_monitor(objects):
    for name, workload in workloads(objects["dev"]).items():
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                               "prometheus.io/path": "/metrics"}, name
    for workload in workloads(objects["prod"]).values():
        assert "prometheus.io/scrape" not in workload["spec"]["template"]["metadata"].get("annotations", {})
    assert len(of_kind(objects["prod"], "ServiceMonitor")) == 1
    assert not of_kind(objects["dev"], "ServiceMonitor")


@pytest.mark.parametrize("variant", VARIANTS)
def test_images_are_the_project_version_and_namespaces_restricted(objects, variant):
    for workload in workloads(objects[variant]).values():
        assert container(workload)["image"] == f"clawmesh:{VERSION}"
    (namespace,) = of_kind(objects[variant], "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects[variant]:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace["metadata"]["name"], obj["metadata"]


def test_the_image_tag_is_the_one_make_image_builds():
    base = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    assert base["images"] == [{"name": "clawmesh", "newTag": VERSION}]


def test_prod_callers_need_an_api_key_from_a_secret_and_dev_says_it_is_open(objects, tmp_path):
    prod, _ = mesh_settings(objects["prod"], "ingest", tmp_path)
    assert prod.security.auth == "api_key"
    ingest = workloads(objects["prod"])["ingest"]
    mounts = {m["name"]: m["mountPath"] for m in container(ingest)["volumeMounts"]}
    volumes = {v["name"]: v for v in ingest["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "clawmesh-api-keys"
    assert str(prod.security.api_keys_file).startswith(mounts["api-keys"] + "/")
    dev, _ = mesh_settings(objects["dev"], "ingest", tmp_path)
    assert dev.security.auth == "dev"  # the documented insecure mode: one replica, a dev cluster


def test_prod_serves_tls_and_mtls_from_a_secret_per_service(objects, tmp_path):
    for name, workload in workloads(objects["prod"]).items():
        settings, _ = mesh_settings(objects["prod"], name, tmp_path)
        assert settings.security.tls and settings.security.mtls
        mounts = {m["name"]: m["mountPath"] for m in container(workload)["volumeMounts"]}
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert volumes["mesh-tls"]["secret"]["secretName"] == f"clawmesh-{name}-tls", name
        assert mounts["mesh-tls"] == str(settings.security.cert_dir / name), name
