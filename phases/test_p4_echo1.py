"""Team Echo-1 (phase 4): the pod network, network policies and the load balancer.

Apply the pod network (the bridge CNI chain, or Calico), a default-deny NetworkPolicy per
managed namespace plus the config's allows, and the load balancer for Services of type
LoadBalancer. Then prove them with traffic from pods the checks start in a namespace of
their own: pod to pod, pod to Service, pod to the probe host outside the cluster, a hostPort
from the controller (and not from the probe), a bandwidth annotation capping a transfer, a
denied connection timing out where policies are enforced, and a load-balanced address
answering the controller with this run's marker.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import allure
import pytest
import requests

from apply.api import Applied, Context
from apply.poll import eventually
from checks import probes
from checks.kube import CHECK_NAMESPACE_PREFIX, CheckNamespace, Cluster
from engine import apply_fixture
from settings.model import Settings
from steps.alpha import hardening
from steps.delta import pod_network as bootstrap_network
from steps.echo1 import load_balancer, network_policy, pod_network

pytestmark = [pytest.mark.usefixtures("applied"), pytest.mark.smoke]


@apply_fixture
def applied(ctx: Context) -> Applied:
    pod_network.apply(ctx)
    network_policy.apply(ctx)
    return load_balancer.apply(ctx)


@pytest.fixture(scope="module")
def web(check_namespace: CheckNamespace):
    return check_namespace.serve_marker("web", labels={"app": "web"})


@pytest.mark.task("CNI plugin setup")
def test_the_pod_network_is_echo1s_chain_on_the_nodes_pod_cidr(
    host, settings: Settings, cluster: Cluster
) -> None:
    directory = settings.bravo.cni_conf_dir
    assert probes.read_fact(host, bootstrap_network.CniConfigs(directory)) == [pod_network.CHAIN]
    config = json.loads(host.file(f"{directory}/{pod_network.CHAIN}").content_string)
    assert [plugin["type"] for plugin in config["plugins"]] == ["bridge", "portmap", "bandwidth", "loopback"]
    node = cluster.core.read_node(cluster.home_node)
    assert config["plugins"][0]["ipam"]["ranges"] == [[{"subnet": node.spec.pod_cidr}]]


@pytest.mark.task("CNI plugin setup")
@pytest.mark.full
def test_pod_to_pod(check_namespace: CheckNamespace, web) -> None:
    assert check_namespace.fetch("to-pod", web.status.pod_ip) == check_namespace.marker


@pytest.mark.task("CNI plugin setup")
@pytest.mark.full
def test_pod_to_service(check_namespace: CheckNamespace, web, host) -> None:
    service = check_namespace.service("web", {"app": "web"}, port=80)
    assert probes.service_programmed(host, service.spec.cluster_ip), (
        "kube-proxy has not programmed the Service"
    )
    assert check_namespace.fetch("to-service", service.spec.cluster_ip, 80) == check_namespace.marker


@pytest.mark.task("CNI plugin setup")
@pytest.mark.full
def test_pod_to_a_host_outside_the_cluster(check_namespace: CheckNamespace, probe) -> None:
    directory = f"/run/hvsuite-check-{check_namespace.name}"
    probe.host.run_expect(
        [0], f"mkdir -p {directory} && printf %s {check_namespace.marker!r} > {directory}/marker"
    )
    try:
        with probes.temporary_listener(
            probe.host, 8089, unit="hvsuite-pod-egress-check", directory=directory
        ):
            assert check_namespace.fetch("to-probe", probe.target.address, 8089) == check_namespace.marker
    finally:
        probe.host.run(f"rm -rf {directory}")


@pytest.mark.task("CNI plugin setup")
@pytest.mark.full
def test_a_host_port_answers_the_controller_and_not_the_probe(
    check_namespace: CheckNamespace, settings: Settings, target, probe
) -> None:
    port = settings.port("Echo-1", "hostport-check")
    check_namespace.serve_marker("host-port", host_port=port)
    url = f"http://{target.address}:{port}/marker"
    answer = eventually(lambda: _get(url), lambda text: text is not None, timeout=30)
    assert answer == check_namespace.marker
    # Declared admin-only: the firewall holds it although the connection is forwarded to a pod.
    assert probes.scan_ports(target.address, [port], timeout=2.0, via=probe.remote).open == set()


@pytest.mark.task("CNI plugin setup")
@pytest.mark.full
def test_a_bandwidth_annotation_caps_a_transfer(
    check_namespace: CheckNamespace, settings: Settings, host
) -> None:
    cap = settings.echo1.check_bandwidth
    declared = int(cap[:-1]) * {"K": 1e3, "M": 1e6, "G": 1e9}[cap[-1]]
    capped = check_namespace.sink("capped", 9000, annotations={"kubernetes.io/ingress-bandwidth": cap})
    uncapped = check_namespace.sink("uncapped", 9000)
    # The token bucket on the pod's veth starts full (kubelet asks for the largest burst):
    # what the veth delivers is measured once that much has passed.
    bucket = pod_network.token_bucket(probes.read_fact(host, pod_network.TokenBuckets()), declared)
    rates = {
        "capped": probes.steady_rate(
            host, capped.status.pod_ip, 9000, device=bucket.device, after=bucket.burst
        ),
        "uncapped": probes.steady_rate(host, uncapped.status.pod_ip, 9000),
    }
    measured = ", ".join(f"{name} {rate / 1e6:.2f} Mbit/s" for name, rate in rates.items())
    allure.attach(f"declared {declared / 1e6:g} Mbit/s; steady rate {measured}", name="measured bandwidth")
    assert declared * 0.8 <= rates["capped"] <= declared * 1.05, rates
    assert rates["uncapped"] >= 3 * rates["capped"], rates


@pytest.mark.task("Network policies")
def test_default_deny_and_allows_are_in_the_api(cluster: Cluster, settings: Settings) -> None:
    policies = settings.echo1.network_policies
    found = {
        f"{p.metadata.namespace}/{p.metadata.name}": p
        for ns in policies.namespaces
        for p in cluster.networking.list_namespaced_network_policy(ns).items
    }
    assert set(found) == network_policy.wanted(policies)
    for namespace in policies.namespaces:
        deny = found[f"{namespace}/{network_policy.DEFAULT_DENY}"].spec
        assert (deny.pod_selector.match_labels, deny.ingress, deny.egress) == (None, None, None)
        assert sorted(deny.policy_types) == ["Egress", "Ingress"]


@pytest.mark.task("Network policies")
@pytest.mark.requires("netpol-enforcement")
@pytest.mark.full
def test_a_denied_connection_times_out_and_an_allowed_one_answers(
    check_namespace: CheckNamespace, settings: Settings
) -> None:
    allowed = next(
        rule
        for rule in settings.echo1.network_policies.allow
        if rule.direction == "ingress" and rule.pods and {"world", "cluster"} & set(rule.peers)
    )
    namespace = allowed.namespace
    open_pod = check_namespace.serve_marker("allowed", namespace=namespace, labels=dict(allowed.pods))
    closed_pod = check_namespace.serve_marker(
        "denied", namespace=namespace, labels={"hvsuite.io/check": "denied"}
    )
    try:
        assert check_namespace.fetch("to-allowed", open_pod.status.pod_ip) == check_namespace.marker
        assert check_namespace.fetch("to-denied", closed_pod.status.pod_ip) is None
    finally:
        for pod in ("allowed", "denied"):
            check_namespace.cluster.core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)


@pytest.mark.task("Load balancer")
@pytest.mark.full
def test_a_load_balancer_service_answers_on_a_pool_address(
    check_namespace: CheckNamespace, settings: Settings, web, probe, host
) -> None:
    balancer = settings.echo1.load_balancer
    port = settings.port("Echo-1", balancer.ports[0])
    check_namespace.service("web-public", {"app": "web"}, port=port, kind="LoadBalancer")
    service = eventually(
        lambda: check_namespace.cluster.core.read_namespaced_service("web-public", check_namespace.name),
        lambda svc: bool(svc.status.load_balancer.ingress),
        timeout=60,
    )
    assert service.status.load_balancer.ingress, "no address from the pool within 60 s"
    address = service.status.load_balancer.ingress[0].ip
    assert address in balancer.addresses()
    answer = eventually(
        lambda: _get(f"http://{address}:{port}/marker"), lambda text: text is not None, timeout=30
    )
    assert answer == check_namespace.marker
    # Declared admin-only: the probe host gets nothing from it.
    assert probes.scan_ports(address, [port], timeout=2.0, via=probe.remote).open == set()
    # Its NodePort is held on loopback only: no listener the firewall's declarations do not name.
    assert hardening.undeclared_listeners(probes.read_fact(host, hardening.Listeners()), settings) == []


@pytest.mark.task("Load balancer")
def test_the_load_balancer_runs(
    host, cluster: Cluster, settings: Settings, profile, notice: Callable[[str], None]
) -> None:
    # The pool serves the platform's users too: their Services are named, never touched.
    pool = set(settings.echo1.load_balancer.addresses())
    for service, addresses in sorted(cluster.load_balancer_addresses().items()):
        if not service.startswith(CHECK_NAMESPACE_PREFIX) and addresses & pool:
            notice(f"Service {service} holds pool address {', '.join(sorted(addresses & pool))}")
    if settings.echo1.load_balancer.resolved_implementation(profile) == "metallb":
        assert cluster.deployment_available(load_balancer.METALLB_NAMESPACE, "controller")
        return
    for unit in ("haproxy", "keepalived", load_balancer.SYNC_UNIT):
        assert host.service(unit).is_running and host.service(unit).is_enabled, unit
    # keepalived holds the whole pool on the host.
    assert set(settings.echo1.load_balancer.addresses()) <= probes.read_fact(
        host, load_balancer.HostAddresses()
    )


def _get(url: str) -> str | None:
    try:
        response = requests.get(url, timeout=5)
    except requests.RequestException:
        return None
    return response.text.strip() if response.status_code == 200 else None
