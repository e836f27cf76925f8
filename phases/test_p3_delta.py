"""Team Delta (phase 3): Kubernetes.

Apply a single-node kubeadm control plane on the primary host, on Bravo's containerd,
untainted so pods schedule on it: the node's software (binaries and images with their
sha256, kubelet), external etcd with TLS where the config says so, ``kubeadm init`` from a
rendered config, Prometheus' access to the API server. Then prove it from the controller
through the API with the operator's kubeconfig: the API server is ready over TLS with the
cluster CA, every node is Ready, a pod from an image built and pushed for this run prints
this run's nonce, a Service answers from a pod and from the node, an unprivileged
ServiceAccount cannot read Secrets, Prometheus scrapes the API server, kubelet runs with swap
off (or configured for it), and kubelet left the controller's kernel alone.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from apply.api import Applied, Context
from apply.facts import Sysctl
from apply.poll import eventually
from checks import probes
from checks.kube import Cluster, MarkerWorkload
from checks.prometheus import PrometheusAPI
from engine import apply_fixture
from settings.base import EffectiveProfile
from settings.model import Settings
from steps.delta import control_plane, etcd, kubectl, kubernetes, preflight

pytestmark = [pytest.mark.usefixtures("applied"), pytest.mark.smoke]


@pytest.fixture(scope="module")
def controller_tunables_before() -> dict[str, str]:
    return kubernetes.local_tunables()


@apply_fixture
def applied(
    ctx: Context, settings: Settings, profile: EffectiveProfile, controller_tunables_before
) -> Applied:
    kubernetes.apply(ctx)
    if settings.delta.resolved_etcd(profile) == "external":
        etcd.apply(ctx)
    return control_plane.apply(ctx)


@pytest.fixture(scope="module")
def workload(cluster: Cluster, target, settings: Settings, host) -> Iterator[MarkerWorkload]:
    """A pod from an image built and pushed for this run, serving a nonce behind a Service."""
    nonce = secrets.token_hex(8)
    with MarkerWorkload.deploy(cluster, settings, registry_host=target.address, nonce=nonce) as workload:
        assert probes.service_programmed(host, workload.service_ip), (
            "kube-proxy has not programmed the Service"
        )
        yield workload


@pytest.mark.task("Deploy K8s control plane")
def test_api_server_is_ready_over_tls_with_the_cluster_ca(
    target, settings: Settings, remote, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(remote.read(kubectl.CA_CERT) or b"")
    url = f"https://{target.address}:{settings.port('Delta', kubernetes.API_PORT_NAME)}/readyz"
    response = requests.get(url, verify=str(ca), timeout=10)
    assert (response.status_code, response.text) == (200, "ok")


@pytest.mark.task("Deploy K8s control plane")
def test_every_node_is_ready(cluster: Cluster) -> None:
    nodes = eventually(cluster.node_conditions, lambda found: found and all(found.values()), timeout=120)
    assert nodes and all(nodes.values()), nodes


@pytest.mark.task("Deploy K8s control plane")
def test_the_node_is_untainted(cluster: Cluster) -> None:
    # The primary's node takes pods; further control planes (Team Foxtrot) keep kubeadm's taint.
    # A node whose kubelet was just started again carries the node controller's "unreachable"
    # taint until the controller sees it Ready (seconds): waited for, not failed on.
    taints = eventually(lambda: cluster.taints()[cluster.home_node], lambda found: not found, timeout=90)
    assert taints == []


@pytest.mark.task("Deploy K8s control plane")
def test_kubelet_runs_with_swap_off_or_configured_for_it(
    host, settings: Settings, profile: EffectiveProfile
) -> None:
    assert host.service("kubelet").is_running
    kubelet = yaml.safe_load(host.file("/var/lib/kubelet/config.yaml").content_string)
    if settings.delta.swap == "allow":
        assert kubelet.get("failSwapOn") is False, kubelet
        return
    # kubelet's default: it refuses to run with swap on, and none is on or set up for boot.
    assert kubelet.get("failSwapOn", True) is True, kubelet
    assert probes.read_fact(host, preflight.ActiveSwaps()) == []
    if not profile.namespaced_sysctls_only:
        assert probes.read_fact(host, preflight.FstabSwaps()) == []


@pytest.mark.task("Deploy K8s control plane")
def test_etcd_is_healthy_and_serves_clients_over_tls_only(
    cluster: Cluster, host, settings: Settings, profile: EffectiveProfile
) -> None:
    assert cluster.get_raw("/readyz/etcd") == "ok"
    if settings.delta.resolved_etcd(profile) == "external":
        assert host.run(etcd.health_command()).rc == 0
        # Without a client certificate etcd refuses the TLS handshake.
        anonymous = host.run(
            f"ETCDCTL_API=3 etcdctl --endpoints={etcd.CLIENT_URL} --cacert={etcd.CA} endpoint health"
        )
        assert anonymous.rc != 0, anonymous.stdout


@pytest.mark.task("Test pod scheduling")
@pytest.mark.full
def test_a_pod_from_this_runs_image_runs_and_prints_the_nonce(workload: MarkerWorkload) -> None:
    assert workload.server_phase() == "Running"
    assert workload.server_node() in workload.cluster.node_conditions()
    assert workload.nonce in workload.server_log()


@pytest.mark.task("Test pod scheduling")
@pytest.mark.full
def test_service_cluster_ip_answers_from_a_pod(workload: MarkerWorkload) -> None:
    assert workload.fetch_from_pod() == workload.marker


@pytest.mark.task("Test pod scheduling")
@pytest.mark.full
def test_service_cluster_ip_answers_from_the_node(workload: MarkerWorkload, host) -> None:
    answer = host.check_output(
        "python3 -c 'import sys, urllib.request; "
        'print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end="")\' %s',
        workload.service_url,
    )
    assert answer.strip() == workload.marker


@pytest.mark.task("Test pod scheduling")
@pytest.mark.full
def test_an_unprivileged_service_account_cannot_read_secrets(workload: MarkerWorkload) -> None:
    # The same question for what its Role grants gets a yes: the review itself works.
    assert workload.account_may("get", "pods") is True
    assert workload.account_may("get", "secrets") is False
    assert workload.account_may("list", "secrets") is False


@pytest.mark.task("Deploy K8s control plane")
def test_prometheus_scrapes_the_api_server(target, settings: Settings) -> None:
    api = PrometheusAPI(f"http://{target.address}:{settings.port('Charlie', 'prometheus')}")
    up = eventually(
        lambda: api.query('up{job="kubernetes-apiserver"}'),
        lambda series: any(s["value"][1] == "1" for s in series),
        timeout=90,
    )
    assert [s["value"][1] for s in up] == ["1"], up
    assert api.query('apiserver_request_total{job="kubernetes-apiserver"}')


@pytest.mark.task("Deploy K8s control plane")
def test_kubelet_left_the_controllers_kernel_alone(
    controller_tunables_before: dict[str, str], host, profile: EffectiveProfile
) -> None:
    assert kubernetes.local_tunables() == controller_tunables_before
    if profile.namespaced_sysctls_only:
        # Inside the host kubelet reads the values it wants (held there, not written).
        inside = {key: probes.read_fact(host, Sysctl(key)) for key in kubernetes.KUBELET_TUNABLES}
        assert inside == kubernetes.KUBELET_TUNABLES


@pytest.mark.task("Deploy K8s control plane")
@pytest.mark.requires("upstream-artifacts")
@pytest.mark.full
def test_coredns_resolves_the_api_service(workload: MarkerWorkload) -> None:
    assert (
        workload.resolve_from_pod("kubernetes.default.svc.cluster.local") == workload.cluster.api_service_ip()
    )


@pytest.mark.task("Configure Flintlock runtime")
@pytest.mark.requires("upstream-artifacts", "kvm")
def test_microvm_provider_controller_is_available(cluster: Cluster) -> None:
    assert cluster.deployment_available("capmvm-system", "capmvm-controller-manager")
