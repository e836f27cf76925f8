"""Team Foxtrot (phase 5): high availability.

Apply: the further nodes get the earlier teams' node steps (firewall, containerd,
Kubernetes); HAProxy and keepalived put the API behind a virtual IP on every control-plane
host; the cluster moves onto that endpoint; etcd grows a member on each further control plane
(external etcd); the control planes and the workers join through the endpoint.

Prove it from the controller: every node Ready, etcd with a healthy member per control plane
over TLS, the API and the health endpoints answering, every client through the virtual IP;
then by failure, polling the API through the virtual IP and a marker pod on a worker while the
holder's API server stops, its keepalived stops, the whole holder stops and is killed: the
API's gap stays within the declared bound, etcd keeps taking writes, the marker keeps
answering, and the host comes back as a healthy member by itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import allure
import pytest

from apply.api import Context
from checks import failover
from checks.kube import CheckNamespace, Cluster
from engine import apply_fixture, not_applicable
from settings.base import Role
from settings.model import Settings
from steps.delta import control_plane, etcd, kubectl, kubernetes
from steps.foxtrot import endpoint, ha_cluster, nodes, vip
from targets import scratch

pytestmark = [pytest.mark.usefixtures("applied"), pytest.mark.smoke]


@pytest.fixture(scope="module")
def control_planes(fleet, artifacts) -> list[Context]:
    return [fleet.context(member, artifacts) for member in fleet.all(Role.CONTROL_PLANE)]


@pytest.fixture(scope="module")
def workers(fleet, artifacts) -> list[Context]:
    return [fleet.context(member, artifacts) for member in fleet.all(Role.WORKER)]


@apply_fixture
def applied(ctx: Context, control_planes, workers) -> None:
    ha_cluster.apply(ctx, control_planes, workers)


@pytest.fixture(scope="module")
def vip_url(settings: Settings) -> tuple[str, int]:
    return settings.foxtrot.virtual_ip, settings.port("Foxtrot", settings.foxtrot.api_port)


@pytest.fixture(scope="module")
def cluster_ca(host, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("foxtrot") / "ca.crt"
    path.write_text(host.file(kubectl.CA_CERT).content_string)
    return str(path)


@pytest.mark.task("Multi-node setup")
def test_every_control_plane_and_worker_is_a_ready_node(cluster: Cluster, control_planes, workers) -> None:
    ready = cluster.node_conditions()
    expected = {cluster.home_node, *(kubernetes.node_name(n) for n in [*control_planes, *workers])}
    assert expected <= set(ready), ready
    assert all(ready[name] for name in expected), ready


@pytest.mark.task("Multi-node setup")
def test_etcd_has_a_healthy_member_per_control_plane_with_tls_peers(
    host, ctx: Context, settings: Settings, control_planes
) -> None:
    if settings.delta.resolved_etcd(ctx.profile) != "external":
        not_applicable("delta.etcd is stacked: kubeadm adds each control plane's member itself")
    members = nodes.etcd_members(ctx.host)
    peers = sorted(url for m in members for url in m["peers"])
    expected = sorted(etcd.peer_url(a) for a in [ctx.address, *(n.address for n in control_planes)])
    assert (peers, [m["learner"] for m in members]) == (expected, [False] * len(expected))
    assert host.run(f"{nodes.ETCDCTL} endpoint health --cluster").rc == 0


@pytest.mark.task("Health checks")
def test_the_api_answers_through_the_virtual_ip(vip_url, cluster_ca: str) -> None:
    address, port = vip_url
    assert failover.https_ok(address, port, "/readyz", ca_file=cluster_ca, timeout=5)


@pytest.mark.task("Health checks")
def test_each_control_planes_health_endpoint_answers(
    ctx: Context, settings: Settings, control_planes
) -> None:
    port = settings.port("Foxtrot", settings.foxtrot.health_port)
    for address in [ctx.address, *(n.address for n in control_planes)]:
        assert failover.http_body(address, port, "/healthz", timeout=5) is not None, address


@pytest.mark.task("Failover config")
def test_the_operator_and_every_node_reach_the_api_through_the_virtual_ip(
    ctx: Context, vip_url, control_planes, workers
) -> None:
    url = f"https://{vip_url[0]}:{vip_url[1]}"
    assert endpoint.server_of(control_plane.fetch_kubeconfig(ctx).read_text()) == url
    for node in [ctx, *control_planes, *workers]:
        assert endpoint.server_of((node.host.read(endpoint.KUBELET_CONF) or b"").decode()) == url, (
            node.address
        )


@pytest.mark.task("Failover config")
def test_one_control_plane_holds_the_virtual_ip(drill_nodes, settings: Settings) -> None:
    holders = [
        n.name
        for n in drill_nodes
        if n.run(f"ip -o -4 addr show | grep -qF ' {settings.foxtrot.virtual_ip}/'")
    ]
    assert len(holders) == 1, holders


# -- failure drills -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drill_nodes(fleet) -> list[failover.Node]:
    """The control-plane hosts, the primary last (it is never the one faulted)."""
    members = [*fleet.all(Role.CONTROL_PLANE), fleet.one(Role.PRIMARY)]
    return [
        failover.Node(
            m.target.name, m.target.address, lambda cmd, m=m: _answers(m.remote, cmd), _power(m.target)
        )
        for m in members
    ]


class WorkerMarker(NamedTuple):
    address: str  # the worker's
    port: int  # the pod's hostPort there
    pod_ip: str


@pytest.fixture(scope="module")
def worker_marker(
    check_namespace: CheckNamespace, workers, target, settings: Settings
) -> Iterator[WorkerMarker]:
    """A pod on a worker serving the run's marker, also on a hostPort of the worker."""
    worker = workers[0]
    # The worker pulls the run's image from the suite's registry on the primary.
    remote = check_namespace.image.replace("127.0.0.1:", f"{target.address}:", 1)
    worker.host.run(f"ctr -n k8s.io images pull --plain-http {remote} >/dev/null")
    worker.host.run(f"ctr -n k8s.io images tag --force {remote} {check_namespace.image}")
    port = settings.port("Foxtrot", settings.foxtrot.marker_port)
    pod = check_namespace.serve_marker("failover-marker", host_port=port, node=kubernetes.node_name(worker))
    yield WorkerMarker(worker.address, port, pod.status.pod_ip)
    worker.host.run(f"ctr -n k8s.io images rm {remote} {check_namespace.image} >/dev/null", check=False)


@pytest.mark.task("Multi-node setup")
@pytest.mark.full
def test_a_pod_on_the_primary_reaches_a_pod_on_the_worker(
    check_namespace: CheckNamespace, worker_marker
) -> None:
    assert check_namespace.fetch("across-nodes", worker_marker.pod_ip) == check_namespace.marker


@pytest.fixture(scope="module")
def drills(
    ctx: Context, settings: Settings, drill_nodes, vip_url, cluster_ca, worker_marker, check_namespace
):
    foxtrot = settings.foxtrot
    external = settings.delta.resolved_etcd(ctx.profile) == "external"
    drills = failover.ControlPlaneDrills(
        nodes=drill_nodes,
        virtual_ip=foxtrot.virtual_ip,
        api=vip_url,
        api_server_port=settings.port("Delta", kubernetes.API_PORT_NAME),
        ca_file=cluster_ca,
        keepalived_unit=vip.KEEPALIVED,
        etcdctl=nodes.ETCDCTL if external else None,
        graceful_bound=foxtrot.graceful_gap_seconds,
        hard_bound=foxtrot.hard_gap_seconds,
        rejoin_timeout=foxtrot.rejoin_timeout,
    )
    address, port, _ = worker_marker
    marker = check_namespace.marker
    results = drills.run(
        lambda: (failover.http_body(address, port, "/marker") or "").strip() == marker, foxtrot.poll_seconds
    )
    table = "\n".join([failover.TABLE_HEAD, *(result.row() for result in results.values())])
    allure.attach(table, name="Failover drills", attachment_type=allure.attachment_type.TEXT)
    return results


def _answers(remote, command: str) -> bool:
    try:
        return remote.run(command, check=False, timeout=10).ok
    except Exception:  # a host that does not answer
        return False


def _power(target) -> failover.Power | None:
    if target.kind != "scratch":
        return None
    return failover.Power(
        stop=lambda: scratch.stop(target.name),
        kill=lambda: scratch.kill(target.name),
        start=lambda: scratch.start(target.name),
    )


def _result(drills, name: str) -> failover.DrillResult:
    if name not in drills:
        not_applicable(
            f"the suite cannot switch the control-plane hosts off and on (ssh hosts): drill {name!r}"
        )
    return drills[name]


@pytest.mark.task("Failover config")
@pytest.mark.parametrize("drill", failover.DRILL_NAMES)
@pytest.mark.full
def test_the_api_answers_through_the_virtual_ip_within_the_bound(drills, drill: str) -> None:
    result = _result(drills, drill)
    assert result.api_gap <= result.bound, result.row()


@pytest.mark.task("Failover config")
@pytest.mark.parametrize("drill", failover.DRILL_NAMES)
@pytest.mark.full
def test_etcd_keeps_quorum_and_the_worker_keeps_serving(drills, drill: str) -> None:
    result = _result(drills, drill)
    assert (result.quorum_kept, result.marker_failed_polls) == (True, 0), result.row()


@pytest.mark.task("Failover config")
@pytest.mark.parametrize("drill", failover.DRILL_NAMES)
@pytest.mark.full
def test_the_faulted_host_is_a_healthy_member_again(drills, drill: str) -> None:
    result = _result(drills, drill)
    assert result.recovered_seconds is not None, result.row()
