"""Team Golf-3 (phase 6): multi-tenancy.

Apply, for each tenant the config declares: in the cluster, a namespace with a ResourceQuota,
a LimitRange, a ServiceAccount bound to a Role in that namespace only, and NetworkPolicies
(deny everything, allow the tenant's own pods); on the primary host, a systemd slice with
the tenant's CPU and memory limits, and a bridge of its own whose traffic to the other
tenants' bridges the team's nftables table drops and counts.

Then prove it from the outside: the tenant's account is allowed in its namespace and refused
in another's (kubectl auth can-i, and real requests with the account's own short-lived
token); a pod asking more than the quota allows is refused by the API, naming the quota;
pods of one tenant reach each other and not another tenant's (where the pod network enforces
policies); a bounded stress run in each slice is held to its CPU and memory limits, measured
from the slice's cgroup; and real packets between network namespaces on the tenants' bridges
pass within a tenant and are dropped, and counted, between tenants.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from decimal import Decimal
from pathlib import Path

import allure
import pytest
from kubernetes.client.exceptions import ApiException

from apply.api import Context
from apply.facts import Sysctl
from apply.poll import eventually
from apply.runner import Host
from checks import probes, tenancy
from checks.kube import CheckNamespace, Cluster, exists, pod
from engine import apply_fixture, not_applicable
from settings.base import EffectiveProfile
from settings.model import Settings
from steps.alpha import firewall
from steps.delta import kubernetes
from steps.golf3 import segments, slices, tenants
from steps.golf3.settings import Golf3Settings, TenantSettings, quantity

pytestmark = [pytest.mark.usefixtures("applied"), pytest.mark.smoke]

REPORT = "golf3-slices"


@apply_fixture
def applied(ctx: Context) -> None:
    tenants.apply(ctx)
    slices.apply(ctx)
    segments.apply(ctx)


@pytest.fixture(scope="module")
def golf3(settings: Settings) -> Golf3Settings:
    return settings.golf3


def _pairs(golf3: Golf3Settings) -> list[tuple[TenantSettings, TenantSettings]]:
    """Each tenant with the next one (the last with the first): every tenant is tried as the
    one acting and as the one refused."""
    if len(golf3.tenants) < 2:
        not_applicable("golf3.tenants declares one tenant: there is no other tenant to be isolated from")
    ring = golf3.tenants
    return [(tenant, ring[(i + 1) % len(ring)]) for i, tenant in enumerate(ring)]


# -- Tenant isolation ------------------------------------------------------------------


@pytest.mark.task("Tenant isolation")
def test_each_tenant_has_its_labelled_namespace_account_and_role(
    cluster: Cluster, golf3: Golf3Settings
) -> None:
    labelled = {
        ns.metadata.name
        for ns in cluster.core.list_namespace(label_selector=f"{tenants.TENANT_LABEL}").items
        if ns.metadata.labels.get("app.kubernetes.io/managed-by") == "hvsuite"
    }
    assert labelled == {tenant.name for tenant in golf3.tenants}
    for tenant in golf3.tenants:
        ns, account = tenant.name, golf3.account
        assert cluster.core.read_namespaced_service_account(account, ns)
        role = cluster.rbac.read_namespaced_role(account, ns)
        assert not any(rule.api_groups == ["rbac.authorization.k8s.io"] for rule in role.rules)
        binding = cluster.rbac.read_namespaced_role_binding(account, ns)
        assert (binding.role_ref.kind, binding.role_ref.name) == ("Role", account)
        assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [("ServiceAccount", account, ns)]


@pytest.mark.task("Tenant isolation")
def test_can_i_allows_the_account_in_its_namespace_only(remote: Host, golf3: Golf3Settings) -> None:
    for tenant, other in _pairs(golf3):
        user = tenancy.account_user(tenant.name, golf3.account)
        assert tenancy.can_i(remote, user, "list", "pods", tenant.name), (
            f"{user} may not list pods in its namespace"
        )
        assert tenancy.can_i(remote, user, "create", "deployments.apps", tenant.name)
        assert not tenancy.can_i(remote, user, "list", "pods", other.name), (
            f"{user} may list {other.name}'s pods"
        )
        assert not tenancy.can_i(remote, user, "create", "pods", other.name)
        # Nor may it change its own limits or grant itself more.
        assert not tenancy.can_i(remote, user, "update", "resourcequotas", tenant.name)
        assert not tenancy.can_i(
            remote, user, "create", "rolebindings.rbac.authorization.k8s.io", tenant.name
        )


@pytest.mark.task("Tenant isolation")
def test_the_accounts_own_token_lists_its_pods_and_is_refused_anothers(
    cluster: Cluster, golf3: Golf3Settings, remote: Host
) -> None:
    for tenant, other in _pairs(golf3):
        token = tenancy.account_token(cluster, tenant.name, golf3.account)
        remote.redactor.add(token)  # never shown, should any output carry it
        api = tenancy.as_token(cluster, token)
        # A real request with the token alone: 200 in its own namespace...
        _, status, _ = api.list_namespaced_pod_with_http_info(tenant.name)
        assert status == 200
        # ... and 403 in the other tenant's, refused for this very account.
        with pytest.raises(ApiException) as refused:
            api.list_namespaced_pod(other.name)
        answer = tenancy.refusal(refused.value)
        user = tenancy.account_user(tenant.name, golf3.account)
        assert (answer.status, answer.reason) == (403, "Forbidden"), answer
        assert f'User "{user}" cannot list resource "pods"' in answer.message, answer.message
        assert f'in the namespace "{other.name}"' in answer.message, answer.message


@pytest.mark.task("Tenant isolation")
def test_the_network_policies_deny_by_default_and_allow_the_tenants_own_pods(
    cluster: Cluster, golf3: Golf3Settings
) -> None:
    for tenant in golf3.tenants:
        found = {
            p.metadata.name: p.spec
            for p in cluster.networking.list_namespaced_network_policy(tenant.name).items
        }
        assert set(found) == {tenants.DEFAULT_DENY, tenants.ALLOW_OWN}, found
        deny = found[tenants.DEFAULT_DENY]
        assert deny.pod_selector.match_labels is None and (deny.ingress, deny.egress) == (None, None)
        assert sorted(deny.policy_types) == ["Egress", "Ingress"]
        allow = found[tenants.ALLOW_OWN]
        # Ingress only from pods of the same namespace (a podSelector without namespaceSelector).
        sources = [peer for rule in allow.ingress for peer in rule._from]
        assert [(p.pod_selector.match_labels, p.namespace_selector, p.ip_block) for p in sources] == [
            (None, None, None)
        ]
        # Egress to the same namespace, and to other namespaces only for DNS on port 53.
        for rule in allow.egress:
            if any(peer.namespace_selector is not None for peer in rule.to):
                assert {port.port for port in rule.ports} == {53}, rule
                assert all(peer.pod_selector.match_labels == golf3.dns_pods for peer in rule.to), rule


@pytest.mark.task("Tenant isolation")
@pytest.mark.requires("netpol-enforcement")
@pytest.mark.full
def test_pods_reach_their_own_tenant_and_not_another(
    check_namespace: CheckNamespace, cluster: Cluster, golf3: Golf3Settings
) -> None:
    for tenant, other in _pairs(golf3):
        server = f"g3-server-{secrets.token_hex(3)}"
        started = [(server, tenant.name)]
        try:
            served = check_namespace.serve_marker(server, namespace=tenant.name, labels={"app": server})
            address = served.status.pod_ip
            own = _fetch(cluster, check_namespace, tenant.name, address, started)
            foreign = _fetch(cluster, check_namespace, other.name, address, started)
        finally:
            for name, namespace in started:
                with contextlib.suppress(ApiException):
                    cluster.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        assert own == check_namespace.marker, f"a pod of {tenant.name} did not reach its own tenant's pod"
        assert foreign is None, f"a pod of {other.name} reached {tenant.name}'s pod"


def _fetch(
    cluster: Cluster, checks: CheckNamespace, namespace: str, address: str, started: list[tuple[str, str]]
) -> str | None:
    name = f"g3-client-{secrets.token_hex(3)}"
    request = "printf 'GET /marker HTTP/1.0\\r\\n\\r\\n'"
    command = ["/bin/busybox", "sh", "-c", f"{request} | /bin/busybox nc -w 5 {address} 8080; true"]
    started.append((name, namespace))
    log = cluster.run_pod(namespace, pod(name, checks.image, {"app": name}, command, "Never"), checks.timeout)
    head, _, body = log.replace("\r\n", "\n").partition("\n\n")
    return body.strip() if head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0] else None


# -- Resource quotas -------------------------------------------------------------------


@pytest.mark.task("Resource quotas")
def test_each_namespace_holds_its_quota_and_limit_range(cluster: Cluster, golf3: Golf3Settings) -> None:
    for tenant in golf3.tenants:
        # The quota controller's own accounting (status.hard) is what admission enforces; it
        # is filled in shortly after the quota is created.
        quota = eventually(
            lambda ns=tenant.name: cluster.core.read_namespaced_resource_quota(tenants.QUOTA, ns),
            lambda q: bool(q.status and q.status.hard),
            timeout=30,
        )
        assert _quantities(quota.status.hard or {}) == _quantities(tenant.quota)
        limits = cluster.core.read_namespaced_limit_range(tenants.LIMITS, tenant.name).spec.limits
        assert len(limits) == 1 and limits[0].type == "Container"
        for field, wanted in (
            ("default", tenant.limits.default),
            ("default_request", tenant.limits.default_request),
            ("max", tenant.limits.max),
        ):
            assert _quantities(getattr(limits[0], field) or {}) == _quantities(wanted), field


def _quantities(values: dict[str, str]) -> dict[str, Decimal]:
    return {key: quantity(value) for key, value in values.items()}


@pytest.mark.task("Resource quotas")
@pytest.mark.full
def test_a_pod_over_the_quota_is_refused_by_the_api(
    cluster: Cluster, golf3: Golf3Settings, settings: Settings, profile: EffectiveProfile
) -> None:
    image = kubernetes.distribution(settings, profile).pause_image
    for tenant in golf3.tenants:
        name = f"g3-over-quota-{secrets.token_hex(3)}"
        resource, _, containers = tenancy.over_quota_request(tenant)
        # The same containers, one of them alone, fit: the API accepts that pod (a dry run).
        fits = tenancy.quota_pod(tenant, image, name, over=False)
        cluster.core.create_namespaced_pod(tenant.name, fits, dry_run="All")
        try:
            with pytest.raises(ApiException) as refused:
                cluster.core.create_namespaced_pod(
                    tenant.name, tenancy.quota_pod(tenant, image, name, over=True)
                )
        finally:
            # Refused, it was never created; anything else is removed again.
            if exists(cluster.core.read_namespaced_pod, name, tenant.name):
                cluster.core.delete_namespaced_pod(name, tenant.name, grace_period_seconds=0)
        answer = tenancy.refusal(refused.value)
        assert (answer.status, answer.reason) == (403, "Forbidden"), answer
        assert f"exceeded quota: {tenants.QUOTA}" in answer.message, answer.message
        assert f"requests.{resource}" in answer.message, answer.message
        allure.attach(
            f"{containers} containers asking requests.{resource}: {answer.message}",
            name=f"{tenant.name}: refusal",
        )


@pytest.mark.task("Resource quotas")
def test_each_slice_has_its_limits_in_the_kernel(remote: Host, host, golf3: Golf3Settings) -> None:
    for tenant in golf3.tenants:
        unit = golf3.slice(tenant)
        state = host.service(unit)
        assert state.is_running and state.is_enabled, unit
        reading = tenancy.read_cgroup(remote, unit)
        assert reading.cpu_quota_percent is not None, f"{unit}: no CPU quota on {reading.cgroup}"
        assert abs(reading.cpu_quota_percent - tenant.cpu_percent) < 0.5, reading
        assert reading.memory_max == tenant.memory_bytes, reading


@pytest.mark.task("Resource quotas")
@pytest.mark.full
def test_a_stress_run_in_each_slice_is_held_to_its_limits(
    remote: Host, golf3: Golf3Settings, reports_dir: Path
) -> None:
    figures = [tenancy.stress_slice(remote, golf3, tenant) for tenant in golf3.tenants]
    text = tenancy.table(figures)
    (reports_dir / f"{REPORT}.md").write_text(text)
    (reports_dir / f"{REPORT}.json").write_text(json.dumps([f.as_dict() for f in figures], indent=2) + "\n")
    allure.attach(
        text, name="slices under stress", attachment_type=allure.attachment_type.TEXT, extension="md"
    )
    for f in figures:
        # The workers wanted more than the quota (the kernel throttled them), and got no more.
        assert f.throttled_periods > 0, f"{f.slice}: never throttled, the quota was not reached\n{text}"
        assert 0 < f.cpu_percent <= f.cpu_ceiling, f"{f.slice}: CPU beyond its quota\n{text}"
        # The hog asked for more than MemoryMax, hit it, and was held at it.
        assert f.memory_max == next(t.memory_bytes for t in golf3.tenants if t.name == f.tenant)
        assert f.memory_limit_hits > 0, f"{f.slice}: the memory limit was never hit\n{text}"
        assert f.memory_peak is not None and f.memory_peak <= f.memory_max, text


# -- Network segmentation --------------------------------------------------------------


@pytest.mark.task("Network segmentation")
def test_each_tenant_has_its_bridge_and_subnet(remote: Host, host, golf3: Golf3Settings) -> None:
    for tenant in golf3.tenants:
        link = probes.read_fact(host, segments.Link(golf3.bridge(tenant)))
        assert link == segments.wanted_link(tenant), link
        unit = segments.segment_unit(tenant)
        assert host.service(unit).is_enabled, f"{unit} would not build the bridge at boot"
    # Routing between the segments is what the isolation table filters.
    assert probes.read_fact(host, Sysctl("net.ipv4.ip_forward")) == "1"


@pytest.mark.task("Network segmentation")
def test_the_isolation_table_is_loaded_beside_alphas_and_persisted(remote: Host, host) -> None:
    live = remote.run(f"nft -j list table inet {segments.TABLE}").stdout
    rules = [entry["rule"] for entry in json.loads(live)["nftables"] if "rule" in entry]
    assert rules and all(
        any("drop" in expr for expr in rule["expr"]) and any("counter" in expr for expr in rule["expr"])
        for rule in rules
    ), rules
    # Alpha's table is still there, untouched by this team's loads.
    assert remote.run(firewall.list_ruleset_command(), check=False).ok
    # The file is what is live, and what a boot loads: Alpha's main config includes it.
    on_disk = host.file(segments.RULES_FILE).content_string
    digest = segments.digest_of(remote.run(f"nft list table inet {segments.TABLE}").stdout)
    assert digest is not None and segments.digest_of(on_disk) == digest
    assert remote.run(f"nft -c -f {firewall.MAIN_CONFIG}", check=False).ok
    assert f'include "{firewall.INCLUDE_DIR}/*.nft"' in host.file(firewall.MAIN_CONFIG).content_string
    assert host.service("nftables.service").is_enabled


@pytest.mark.task("Network segmentation")
@pytest.mark.full
def test_packets_pass_within_a_tenant_and_are_dropped_and_counted_between_tenants(
    remote: Host, golf3: Golf3Settings
) -> None:
    pairs = _pairs(golf3)
    with tenancy.attached(remote, tenancy.endpoints(golf3)) as groups:
        within = [tenancy.ping(remote, group[0], group[1].address) for group in groups.values()]
        gateway = [tenancy.ping(remote, group[0], group[0].gateway) for group in groups.values()]
        before = tenancy.crossing_drops(remote)
        across = [tenancy.ping(remote, groups[a.name][0], groups[b.name][0].address) for a, b in pairs]
        after = tenancy.crossing_drops(remote)
    summary = (
        "\n".join(
            f"{kind}: {p.source} -> {p.destination}: {p.received}/{p.sent}"
            for kind, found in (("within", within), ("gateway", gateway), ("across", across))
            for p in found
        )
        + f"\ndrop counter {segments.COUNTER}: {before} -> {after}"
    )
    allure.attach(summary, name="pings")
    assert all(p.received == p.sent > 0 for p in within), summary
    assert all(p.received == p.sent > 0 for p in gateway), summary
    assert all(p.received == 0 and p.sent > 0 for p in across), summary
    # Every lost request was the team's drop between the bridges, not a missing route.
    assert after - before >= sum(p.sent for p in across), summary
