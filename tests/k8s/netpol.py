"""Which connections a set of NetworkPolicies allows: a small evaluator of the API's rules.

    actors = cluster_actors(objs)                  # the rendered pods + a few outside ones
    edges = allowed_edges(objs, actors)            # {("ingest", "routing", "TCP", 50052), ...}

A connection is allowed when the source's egress and the destination's ingress both allow it
(a pod that no policy of a direction selects is open in that direction). Peers: podSelector
(same namespace), namespaceSelector (+ podSelector), ipBlock (with except). Ports: number or
container port name, protocol (TCP by default), endPort. That is the whole of
networking.k8s.io/v1; the outside actors stand for what the policies mention.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Actor:
    name: str
    namespace: str
    labels: dict = field(hash=False)
    ip: str
    ports: tuple[tuple[str, str, int], ...] = ()  # (name, protocol, number) it listens on
    pod: bool = True  # False: outside the cluster (only ipBlocks match it)


def outside_actors() -> list[Actor]:
    """Who else is there: cluster DNS, Prometheus, a Redis in its own namespace, some other
    pod, and addresses outside the cluster (a public API, the cloud metadata endpoint)."""
    return [
        Actor("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, "10.96.0.10",
              (("dns", "UDP", 53), ("dns-tcp", "TCP", 53))),
        Actor("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, "10.1.0.5",
              (("web", "TCP", 9090),)),
        Actor("redis-external", "redis", {"app.kubernetes.io/name": "redis"}, "10.1.0.6",
              (("redis", "TCP", 6379),)),
        Actor("other-pod", "default", {"app": "other"}, "10.1.0.7", (("http", "TCP", 8080),)),
        Actor("internet", "", {}, "203.0.113.10", (("https", "TCP", 443),), pod=False),
        Actor("cloud-metadata", "", {}, "169.254.169.254", (("http", "TCP", 80),), pod=False),
    ]


def cluster_actors(objs: list[dict]) -> list[Actor]:
    actors = []
    for i, obj in enumerate(o for o in objs if o["kind"] in ("Deployment", "StatefulSet")):
        template = obj["spec"]["template"]
        ports = tuple((p.get("name", ""), p.get("protocol", "TCP"), p["containerPort"])
                      for c in template["spec"]["containers"] for p in c.get("ports", []))
        labels = template["metadata"]["labels"]
        actors.append(Actor(labels.get("app.kubernetes.io/component", obj["metadata"]["name"]),
                            obj["metadata"]["namespace"], labels, f"10.2.0.{i + 1}", ports))
    return actors + outside_actors()


def selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _namespace_labels(actor: Actor) -> dict:
    return {"kubernetes.io/metadata.name": actor.namespace}


def peer_matches(peer: dict, other: Actor, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        if ip not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(ip in ipaddress.ip_network(e) for e in block.get("except", [])
                       if ipaddress.ip_network(e).version == ip.version)
    if not other.pod:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], _namespace_labels(other)):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), other.labels)


def port_matches(rule_ports: list[dict] | None, target: Actor, proto: str, number: int) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != proto:
            continue
        port = p.get("port")
        if port is None:
            return True
        if isinstance(port, str):  # a named port, resolved on the destination pod
            if any(name == port and pr == proto and n == number for name, pr, n in target.ports):
                return True
        elif port <= number <= p.get("endPort", port):
            return True
    return False


def policy_types(spec: dict) -> list[str]:
    """As the API server defaults them: Ingress always, Egress when there are egress rules."""
    return spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])]


def _direction_allows(policies, subject: Actor, other: Actor, target: Actor, proto, number,
                      direction: str) -> bool:
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [p for p in policies if subject.pod and p["metadata"]["namespace"] == subject.namespace
                 and selects(p["spec"]["podSelector"], subject.labels)
                 and direction in policy_types(p["spec"])]
    if not selecting:
        return True  # not isolated in this direction
    for policy in selecting:
        for rule in policy["spec"].get(key, []):
            peers = rule.get(peers_key)
            namespace = policy["metadata"]["namespace"]
            if (not peers or any(peer_matches(peer, other, namespace) for peer in peers)) \
                    and port_matches(rule.get("ports"), target, proto, number):
                return True
    return False


def allowed(policies, src: Actor, dst: Actor, proto: str, number: int) -> bool:
    return (_direction_allows(policies, src, dst, dst, proto, number, "Egress")
            and _direction_allows(policies, dst, src, dst, proto, number, "Ingress"))


def allowed_edges(objs: list[dict], actors: list[Actor]) -> set[tuple[str, str, str, int]]:
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    return {(src.name, dst.name, proto, number)
            for src in actors for dst in actors if src is not dst
            for _, proto, number in dst.ports
            if allowed(policies, src, dst, proto, number)}
