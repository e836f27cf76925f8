"""Team Foxtrot's steps as data: its settings, its contributions to Delta's cluster (the
endpoint in the API server's certificate, etcd on the host's address), the virtual IP's
keepalived and HAProxy configs, the join config, and the drills' gap arithmetic. No SSH."""

from __future__ import annotations

import re

import pytest
import yaml
from pydantic import ValidationError

from apply.extensions import hooks
from apply.testing import FakeConnection, fake_context, fake_host
from checks import failover
from settings.loader import load_settings
from settings.model import Settings
from steps.delta import control_plane, etcd, kubeadm_config
from steps.foxtrot import endpoint, vip

SETTINGS = load_settings()
PEERS = {"primary": ("10.231.0.2",), "control-plane": ("10.231.0.3", "10.231.0.4"), "worker": ("10.231.0.5",)}


def _settings(**foxtrot: object) -> Settings:
    data = SETTINGS.model_dump(mode="json")
    data["foxtrot"].update(foxtrot)
    return Settings.model_validate(data)


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            {"virtual_ip": "10.231.0.20"},
            r"foxtrot.virtual_ip 10.231.0.20 lies in scratch.subnet .*scratch.keep_free",
        ),
        ({"virtual_ip": "10.231.0.241"}, r"lies in echo1.load_balancer.pool"),
        ({"vrrp_router_id": 51}, r"foxtrot.vrrp_router_id 51 is echo1.load_balancer.vrrp_router_id too"),
        ({"virtual_ip": "10.231.0.999"}, r"foxtrot.virtual_ip '10.231.0.999' is not an IPv4 address"),
        ({"graceful_gap_seconds": 6.0}, r"graceful_gap_seconds exceeds foxtrot.hard_gap_seconds"),
    ],
)
def test_bad_foxtrot_settings_are_refused_naming_the_field(change: dict, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        _settings(**change)


def test_without_a_virtual_ip_the_endpoint_is_an_error_naming_the_field() -> None:
    settings = _settings(virtual_ip=None)
    assert hooks().control_plane_endpoint(settings=settings) is None
    with pytest.raises(ValueError, match=r"foxtrot.virtual_ip is not set"):
        settings.foxtrot.endpoint(8443)


# -- contributions to Delta ----------------------------------------------------------------


def test_the_endpoint_is_the_virtual_ip_on_haproxys_port_and_the_certificate_names_it() -> None:
    assert hooks().control_plane_endpoint(settings=SETTINGS) == "10.231.0.250:8443"
    from steps.delta import kubernetes

    assert kubernetes.endpoint_hosts(SETTINGS) == ("10.231.0.250",)


def test_etcd_serves_peers_on_the_hosts_address_once_control_planes_are_declared() -> None:
    assert hooks().etcd_clustered(settings=SETTINGS) is True
    single = SETTINGS.model_copy(
        update={"hosts": [h for h in SETTINGS.hosts if "control-plane" not in h.roles]}
    )
    assert hooks().etcd_clustered(settings=single) is False
    env = etcd.environment("host1", "10.231.0.2")
    assert (
        env["ETCD_LISTEN_PEER_URLS"] == env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == "https://10.231.0.2:2380"
    )
    assert env["ETCD_LISTEN_CLIENT_URLS"] == "https://127.0.0.1:2379,https://10.231.0.2:2379"
    assert env["ETCD_INITIAL_CLUSTER"] == "host1=https://10.231.0.2:2380"
    # A single node keeps everything on loopback.
    assert etcd.environment("host1")["ETCD_LISTEN_PEER_URLS"] == "https://127.0.0.1:2380"


def test_delta_keeps_the_endpoint_the_cluster_was_moved_to() -> None:
    host = fake_host(FakeConnection())
    assert control_plane.applied_endpoint(host) is None
    spec = kubeadm_config.ClusterSpec(
        version="1.20.2", node_name="host1", advertise_address="10.231.0.2", bind_port=6443,
        cluster_name="hvsuite", pod_subnet="10.244.0.0/16", service_subnet="10.96.0.0/12",
        image_repository="registry.local", etcd="external", cert_sans=("10.231.0.2", "10.231.0.250"),
        namespaced_sysctls_only=True, has_crictl=False, has_coredns_image=False,
        control_plane_endpoint="10.231.0.250:8443",
    )  # fmt: skip
    host = fake_host(FakeConnection(files={control_plane.CONFIG: kubeadm_config.render(spec).encode()}))
    assert control_plane.applied_endpoint(host) == "10.231.0.250:8443"


@pytest.mark.parametrize(
    ("version", "api", "skip"), [("1.20.2", "v1beta2", None), ("1.35.8", "v1beta4", None)]
)
def test_a_join_config_names_the_endpoint_token_and_the_node(version: str, api: str, skip: None) -> None:
    spec = kubeadm_config.JoinSpec(
        version=version, node_name="host2", advertise_address="10.231.0.3", endpoint="10.231.0.250:8443",
        token="abcdef.0123456789abcdef", ca_cert_hash="sha256:" + "0" * 64, control_plane=True,
        bind_port=6443, has_crictl=version != "1.20.2",
    )  # fmt: skip
    (doc,) = yaml.safe_load_all(kubeadm_config.render_join(spec))
    assert doc["apiVersion"] == f"kubeadm.k8s.io/{api}" and doc["kind"] == "JoinConfiguration"
    assert doc["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "10.231.0.250:8443"
    assert doc["controlPlane"]["localAPIEndpoint"] == {"advertiseAddress": "10.231.0.3", "bindPort": 6443}
    # 1.20's preflight needs crictl, which the recipe's node lacks: skipped (by flag: v1beta2 has no field).
    assert kubeadm_config.join_skip_phases(spec) == (("preflight",) if version == "1.20.2" else ())
    assert "skipPhases" not in doc
    worker = kubeadm_config.render_join(kubeadm_config.JoinSpec(**{**spec.__dict__, "control_plane": False}))
    assert "controlPlane" not in yaml.safe_load(worker)


# -- the virtual IP ------------------------------------------------------------------------


def _ctx(address: str):  # type: ignore[no-untyped-def]
    ctx = fake_context(fake_host(FakeConnection()), SETTINGS, profile="scratch", address=address)
    return ctx.__class__(**{**ctx.__dict__, "peers": PEERS})


def test_keepalived_prefers_the_control_plane_hosts_and_the_primary_comes_last() -> None:
    order = vip.control_planes(_ctx("10.231.0.2"))
    assert order == ["10.231.0.3", "10.231.0.4", "10.231.0.2"]
    priorities = [vip.priority(order, address) for address in order]
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == 3
    text = vip.keepalived_config(_ctx("10.231.0.3"), order, "eth0")
    assert re.search(r"virtual_router_id 52\b", text) and "nopreempt" in text and "state BACKUP" in text
    assert "10.231.0.250/32 dev eth0" in text
    peers = re.search(r"unicast_peer \{(.*?)\}", text, re.S)
    assert peers and peers.group(1).split() == ["10.231.0.4", "10.231.0.2"]
    assert f"systemctl is-active --quiet {vip.HAPROXY}" in text


def test_haproxy_spreads_the_api_over_every_control_plane_and_serves_health() -> None:
    order = vip.control_planes(_ctx("10.231.0.2"))
    text = vip.haproxy_config(_ctx("10.231.0.2"), order)
    servers = re.findall(r"^\s+server \S+ (\S+)$", text, re.M)
    assert servers == ["10.231.0.3:6443", "10.231.0.4:6443", "10.231.0.2:6443"]
    assert "bind :8443" in text and "bind :8404" in text and "option httpchk GET /readyz" in text
    assert "monitor fail if { nbsrv(kube_apiservers) lt 1 }" in text


def test_kubeconfigs_are_pointed_at_the_endpoint_and_nothing_else_changes() -> None:
    config = {
        "apiVersion": "v1",
        "clusters": [
            {"name": "k", "cluster": {"server": "https://10.231.0.2:6443", "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": "admin", "user": {"token": "t"}}],
    }  # fmt: skip
    moved = yaml.safe_load(endpoint.with_server(yaml.safe_dump(config), "https://10.231.0.250:8443"))
    assert endpoint.server_of(yaml.safe_dump(moved)) == "https://10.231.0.250:8443"
    assert moved["clusters"][0]["cluster"]["insecure-skip-tls-verify"] is True
    assert moved["users"] == config["users"]


# -- drills --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answers", "gap"),
    [
        ([(0.0, True), (0.2, True), (0.4, True)], 0.0),
        ([(0.0, True), (0.2, False), (0.4, False), (0.6, True), (0.8, True)], 0.6),
        (
            [(0.0, True), (0.2, False), (0.4, True), (0.6, False), (0.8, False), (1.0, False), (1.4, True)],
            1.0,
        ),
        # Still failing at the end of the window: counted up to the last answer.
        ([(0.0, True), (0.2, False), (0.9, False)], 0.9),
    ],
)
def test_the_gap_is_the_longest_silence_between_good_answers(answers: list, gap: float) -> None:
    assert failover.longest_gap(answers) == gap


def test_the_drills_never_fault_the_primary() -> None:
    holds = {"host2": False, "host1": True}
    nodes = [
        failover.Node(name, "10.231.0.9", lambda cmd, name=name: holds[name]) for name in ("host2", "host1")
    ]
    drills = failover.ControlPlaneDrills(
        nodes=nodes, virtual_ip="10.231.0.250", api=("10.231.0.250", 8443), api_server_port=6443,
        ca_file="/dev/null", keepalived_unit=vip.KEEPALIVED, etcdctl=None, graceful_bound=2,
        hard_bound=5, rejoin_timeout=1,
    )  # fmt: skip
    with pytest.raises(AssertionError, match="the virtual IP is on the primary"):
        drills.holder(None)
    # Without power over the hosts only the two service drills run.
    assert [d.name for d in drills.drills()] == ["api-server stopped", "keepalived stopped"]


# -- pod routes ----------------------------------------------------------------------------


def test_each_node_routes_every_other_nodes_pod_subnet_via_that_node() -> None:
    from apply import ops
    from steps.foxtrot import pod_routes

    table = [
        pod_routes.NodeRoute("host1", "10.244.0.0/24", "10.231.0.2"),
        pod_routes.NodeRoute("host2", "10.244.2.0/24", "10.231.0.3"),
        pod_routes.NodeRoute("worker1", "10.244.1.0/24", "10.231.0.5"),
    ]
    wanted = pod_routes.routes_for("10.231.0.3", table)
    assert [(r.pod_cidr, r.address) for r in wanted] == [
        ("10.244.0.0/24", "10.231.0.2"),
        ("10.244.1.0/24", "10.231.0.5"),
    ]
    unit = ops.render(pod_routes.TEMPLATES / "pod-routes.service.j2", {"routes": wanted})
    assert re.findall(r"ExecStart=(.*)", unit) == [
        "/sbin/ip route replace 10.244.0.0/24 via 10.231.0.2",
        "/sbin/ip route replace 10.244.1.0/24 via 10.231.0.5",
    ]
    live = pod_routes.LiveRoutes().parse(
        "default via 10.231.0.1 dev eth0\n"
        "10.244.0.0/24 via 10.231.0.2 dev eth0\n"
        "10.244.2.0/24 dev cni0 proto kernel\n"
    )
    assert live == {("default", "10.231.0.1"), ("10.244.0.0/24", "10.231.0.2")}


def test_a_configmaps_kubeconfig_is_patched_only_where_it_names_another_server() -> None:
    old = yaml.safe_dump({"clusters": [{"name": "k", "cluster": {"server": "https://10.231.0.2:6443"}}]})
    conn = FakeConnection(responses={re.compile(r".* get configmap kube-proxy .*"): (0, old, "")})
    host = fake_host(conn)
    assert endpoint._configmap_server(
        host, "kube-system", "kube-proxy", "kubeconfig.conf", "https://10.231.0.250:8443"
    )
    (patch,) = [c for c in conn.commands if " patch configmap kube-proxy " in c]
    assert "10.231.0.250:8443" in patch and "kubeconfig.conf" in patch
    moved = endpoint.with_server(old, "https://10.231.0.250:8443")
    conn = FakeConnection(responses={re.compile(r".* get configmap kube-proxy .*"): (0, moved, "")})
    host = fake_host(conn)
    assert not endpoint._configmap_server(
        host, "kube-system", "kube-proxy", "kubeconfig.conf", "https://10.231.0.250:8443"
    )
    assert not [c for c in conn.commands if " patch " in c]
