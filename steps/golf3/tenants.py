"""Team Golf-3: each tenant's place in the cluster.

Per tenant, one namespace with a ResourceQuota, a LimitRange, a ServiceAccount allowed to run
workloads there (a Role and its RoleBinding, in that namespace only) and two NetworkPolicies:
a default deny of everything in and out, and an allow for the tenant's own pods (and the
cluster's DNS). Pods of another tenant are thus refused both ways. The objects go through
Delta's ``apply_manifest`` (one manifest, applied when ``kubectl diff`` sees a difference);
every one carries the suite's managed-by label, and the namespaces a tenant label, by which
a tenant the config no longer declares is found and deleted. Namespaces of other teams or of
the operator are never selected.
"""

from __future__ import annotations

from typing import Any

from apply import ops
from apply.api import Context, step
from steps.delta.kubectl import MANAGED_BY, apply_manifest, kubectl
from steps.golf3.settings import Golf3Settings, TenantSettings

# The label naming the tenant a namespace belongs to.
TENANT_LABEL = "hvsuite.io/tenant"
QUOTA = "tenant-quota"
LIMITS = "tenant-limits"
DEFAULT_DENY = "default-deny"
ALLOW_OWN = "allow-own-tenant"
MANIFEST = "golf3-tenants"
# What a tenant's account may do in its own namespace: run and inspect workloads. It may read
# its quota, limits and policies but not change them, nor grant itself anything (no RBAC).
WORKLOAD_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
ROLE_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": [""],
        "resources": ["pods", "pods/log", "services", "configmaps", "secrets", "persistentvolumeclaims"],
        "verbs": WORKLOAD_VERBS,
    },
    {
        "apiGroups": ["apps"],
        "resources": ["deployments", "replicasets", "statefulsets"],
        "verbs": WORKLOAD_VERBS,
    },
    {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": WORKLOAD_VERBS},
    {
        "apiGroups": [""],
        "resources": ["resourcequotas", "limitranges", "events"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch"]},
]


def _meta(name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)}


def tenant_documents(golf3: Golf3Settings, tenant: TenantSettings) -> list[dict[str, Any]]:
    """Pure: the objects of one tenant, its namespace first."""
    ns, account = tenant.name, golf3.account
    limits = tenant.limits
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {**MANAGED_BY, TENANT_LABEL: ns}},
        },
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": _meta(QUOTA, ns),
            "spec": {"hard": dict(tenant.quota)},
        },
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": _meta(LIMITS, ns),
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        **({"default": dict(limits.default)} if limits.default else {}),
                        **(
                            {"defaultRequest": dict(limits.default_request)} if limits.default_request else {}
                        ),
                        **({"max": dict(limits.max)} if limits.max else {}),
                    }
                ]
            },
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(account, ns)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(account, ns),
            "rules": ROLE_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(account, ns),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}],
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(DEFAULT_DENY, ns),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(ALLOW_OWN, ns),
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                # Only the tenant's own pods in; out to them and to the cluster's DNS.
                "ingress": [{"from": [{"podSelector": {}}]}],
                "egress": [
                    {"to": [{"podSelector": {}}]},
                    {
                        "to": [
                            {"namespaceSelector": {}, "podSelector": {"matchLabels": dict(golf3.dns_pods)}}
                        ],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                    },
                ],
            },
        },
    ]


def documents(golf3: Golf3Settings) -> list[dict[str, Any]]:
    """Pure: every tenant's objects."""
    return [doc for tenant in golf3.tenants for doc in tenant_documents(golf3, tenant)]


LIST_TENANT_NAMESPACES = kubectl(
    "get",
    "namespaces",
    "-l",
    ",".join([*(f"{key}={value}" for key, value in MANAGED_BY.items()), TENANT_LABEL]),
    "-o",
    "jsonpath={range .items[*]}{.metadata.name}{'\\n'}{end}",
)


@step("Tenant namespaces")
def apply(ctx: Context) -> None:
    host, golf3 = ctx.host, ctx.settings.golf3
    apply_manifest(host, MANIFEST, documents(golf3))
    if host.mode == "verify":
        return
    listed = host.run(LIST_TENANT_NAMESPACES, check=False)
    present = set(listed.stdout.split()) if listed.ok else set()
    # Only namespaces carrying both the suite's label and a tenant label are candidates.
    for stale in sorted(present - {tenant.name for tenant in golf3.tenants}):
        ops.command(
            host,
            kubectl("delete", "namespace", stale, "--ignore-not-found", "--timeout=180s"),
            name=f"delete tenant namespace {stale} (no longer configured)",
        )
