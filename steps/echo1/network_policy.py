"""Team Echo-1: NetworkPolicies, a default deny per managed namespace plus the config's allows.

The objects go through the API like any other (applied from one manifest, compared with
``kubectl diff``); policies Echo-1 made earlier and the config no longer names are deleted.
Whether they are *enforced* is the pod network's business: Calico does, the bridge chain
does not (a profile without enforcement waives ``netpol-enforcement``).
"""

from __future__ import annotations

from typing import Any

from apply import ops
from apply.api import Context, step
from steps.delta.kubectl import MANAGED_BY, apply_manifest, kubectl
from steps.echo1.settings import NetworkPolicySettings, PolicyAllow

DEFAULT_DENY = "default-deny"
# Echo-1's own objects: other teams' policies (Golf-3's tenants) carry the suite's label too,
# and only these are Echo-1's to delete when the config no longer names them.
LABELS = {**MANAGED_BY, "hvsuite.io/team": "echo1"}


def _peer(peer: str) -> dict[str, Any]:
    if peer == "namespace":
        return {"podSelector": {}}
    if peer == "cluster":
        return {"namespaceSelector": {}}
    return {"ipBlock": {"cidr": "0.0.0.0/0" if peer == "world" else peer}}


def allow_policy(rule: PolicyAllow) -> dict[str, Any]:
    direction = "Ingress" if rule.direction == "ingress" else "Egress"
    entry: dict[str, Any] = {"from" if rule.direction == "ingress" else "to": [_peer(p) for p in rule.peers]}
    if rule.ports:
        entry["ports"] = [{"protocol": "TCP", "port": port} for port in rule.ports]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": rule.name, "namespace": rule.namespace, "labels": LABELS},
        "spec": {
            "podSelector": {"matchLabels": dict(rule.pods)} if rule.pods else {},
            "policyTypes": [direction],
            rule.direction: [entry],
        },
    }


def documents(policies: NetworkPolicySettings) -> list[dict[str, Any]]:
    """The namespaces, each one's default deny, then the allows."""
    docs: list[dict[str, Any]] = []
    for namespace in policies.namespaces:
        docs.append(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": LABELS}}
        )
        docs.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": DEFAULT_DENY, "namespace": namespace, "labels": LABELS},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
            }
        )
    return docs + [allow_policy(rule) for rule in policies.allow]


def wanted(policies: NetworkPolicySettings) -> set[str]:
    """``namespace/name`` of every policy the config wants."""
    return {
        f"{d['metadata']['namespace']}/{d['metadata']['name']}"
        for d in documents(policies)
        if d["kind"] == "NetworkPolicy"
    }


LIST_MANAGED = kubectl(
    "get",
    "networkpolicies",
    "--all-namespaces",
    "-l",
    ",".join(f"{key}={value}" for key, value in LABELS.items()),
    "-o",
    "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{'\\n'}{end}",
)


@step("Network policies")
def apply(ctx: Context) -> None:
    host, policies = ctx.host, ctx.settings.echo1.network_policies
    apply_manifest(host, "network-policies", documents(policies))
    if host.mode == "verify":
        return
    listed = host.run(LIST_MANAGED, check=False)
    present = set(listed.stdout.split()) if listed.ok else set()
    for stale in sorted(present - wanted(policies)):
        namespace, name = stale.split("/", 1)
        ops.command(
            host,
            kubectl("-n", namespace, "delete", "networkpolicy", name, "--ignore-not-found"),
            name=f"delete network policy {stale} (no longer configured)",
        )
