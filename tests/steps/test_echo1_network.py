"""Team Echo-1's steps as data: the pod network's config, the policies it renders, the load
balancer's settings and its address allocator, and the firewall's hold on forwarded ports.
No SSH (see apply.testing)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from apply.facts import CommandSucceeds, FileInfo
from apply.testing import FakeConnection, fake_context, fake_host
from settings.loader import load_settings
from settings.model import Settings
from steps.alpha import firewall
from steps.delta import pod_network as bootstrap_network
from steps.delta.kubectl import KUBECTL, MANIFEST_DIR
from steps.echo1 import load_balancer, network_policy, pod_network

SETTINGS = load_settings()
SCRATCH = SETTINGS.effective_profile("scratch")
PRODUCTION = SETTINGS.effective_profile("production")
CNI_DIR = SETTINGS.bravo.cni_conf_dir
PODCIDR = re.compile(r".*jsonpath=\{\.spec\.podCIDR\}.*")


def _settings(**echo1: object) -> Settings:
    data = SETTINGS.model_dump(mode="json")
    data["echo1"].update(echo1)
    return Settings.model_validate(data)


def _sync_program():  # type: ignore[no-untyped-def]
    path = load_balancer.TEMPLATES / "hvsuite-lb-sync.py"
    spec = importlib.util.spec_from_file_location("hvsuite_lb_sync", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- pod network ---------------------------------------------------------------------------


def test_echo1s_chain_is_bridge_portmap_bandwidth_loopback_on_the_pod_cidr() -> None:
    chain = json.loads(pod_network.chain("10.244.0.0/24", "cni0"))
    assert [p["type"] for p in chain["plugins"]] == ["bridge", "portmap", "bandwidth", "loopback"]
    assert chain["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.0.0/24"}]]
    assert chain["plugins"][2]["capabilities"] == {"bandwidth": True}
    plugins = bootstrap_network.bridge_plugins("10.244.0.0/24", "cni0")
    bootstrap = json.loads(bootstrap_network.conflist(plugins, "Team Delta"))
    # One network name: both share host-local's address store, so no address is handed out twice.
    assert bootstrap["name"] == chain["name"] == bootstrap_network.NETWORK_NAME
    assert [p["type"] for p in bootstrap["plugins"]] == ["bridge", "portmap"]


def test_the_scratch_profile_gets_the_bridge_chain_and_production_calico() -> None:
    assert SETTINGS.echo1.pod_network.resolved_plugin(SCRATCH) == "bridge"
    assert SETTINGS.echo1.pod_network.resolved_plugin(PRODUCTION) == "calico"
    assert SETTINGS.echo1.load_balancer.resolved_implementation(SCRATCH) == "keepalived-haproxy"
    assert SETTINGS.echo1.load_balancer.resolved_implementation(PRODUCTION) == "metallb"


@pytest.mark.parametrize(
    ("present", "writes"),
    [
        ("", True),
        (f"{bootstrap_network.BOOTSTRAP}\n", True),
        (f"{pod_network.CHAIN}\n", False),
        ("10-calico.conflist\n", False),
    ],
)
def test_delta_bootstraps_a_pod_network_only_where_there_is_none(present: str, writes: bool) -> None:
    conn = FakeConnection()
    conn.set_fact(bootstrap_network.CniConfigs(CNI_DIR), present)
    conn.respond(PODCIDR, (0, "10.244.0.0/24", ""))
    host = fake_host(conn, mode="check")
    settings = SETTINGS.model_copy(
        update={
            "echo1": SETTINGS.echo1.model_copy(
                update={"pod_network": SETTINGS.echo1.pod_network.model_copy(update={"bridge": "hvpods0"})}
            )
        }
    )
    bootstrap_network.bootstrap(fake_context(host, settings, profile="scratch"), "hv1")
    would = [r.op for r in host.changes]
    assert (f"file {CNI_DIR}/{bootstrap_network.BOOTSTRAP}" in would) is writes
    if writes:
        # Echo-1's bridge, through its contribution to Delta's extension point.
        assert '"bridge": "hvpods0"' in (host.changes[-1].diff or "")


def test_echo1_replaces_the_bootstrap_and_retired_configs_with_its_chain() -> None:
    conn = FakeConnection()
    for name in (bootstrap_network.BOOTSTRAP, pod_network.RETIRED[0]):
        conn.set_fact(FileInfo(f"{CNI_DIR}/{name}"), "regular file|root|root|644|2")
    conn.respond("hostname", (0, "hv1\n", ""))
    conn.respond(PODCIDR, (0, "10.244.0.0/24", ""))
    host = fake_host(conn, mode="check")
    applied = pod_network.apply(fake_context(host, SETTINGS, profile="scratch"))
    would = [r.op for r in applied.changes]
    assert f"file {CNI_DIR}/{pod_network.CHAIN}" in would
    assert any(bootstrap_network.BOOTSTRAP in op and "absent" in op for op in would), would
    assert any(pod_network.RETIRED[0] in op and "absent" in op for op in would), would


def test_config_files_are_listed_as_containerd_reads_them() -> None:
    fact = bootstrap_network.CniConfigs("/etc/cni/net.d")
    assert fact.parse("99-b.conflist\nREADME\n10-a.conflist\nx.conf\n") == [
        "10-a.conflist",
        "99-b.conflist",
        "x.conf",
    ]


def test_the_token_bucket_of_a_rate_is_found_by_its_rate() -> None:
    listing = json.dumps(
        [
            {"kind": "noqueue", "dev": "lo", "options": {}},
            {"kind": "tbf", "dev": "veth1", "options": {"rate": 2500000, "burst": 261993004}},
            {"kind": "tbf", "dev": "veth2", "options": {"rate": 125000, "burst": 5000}},
        ]
    )
    buckets = pod_network.TokenBuckets().parse(listing)
    # tc reports bytes per second.
    assert pod_network.token_bucket(buckets, 20e6) == pod_network.TokenBucket("veth1", 20_000_000, 261993004)
    with pytest.raises(AssertionError, match="expected one token bucket"):
        pod_network.token_bucket(buckets, 8e6)


def test_calicos_manifest_gets_the_clusters_pod_subnet() -> None:
    documents = [
        {"kind": "ConfigMap", "metadata": {"name": "calico-config"}},
        {
            "kind": "DaemonSet",
            "metadata": {"name": "calico-node"},
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": "calico-node", "env": [{"name": "X", "value": "1"}]}]}
                }
            },
        },
    ]
    out = pod_network.calico_documents(documents, "10.244.0.0/16")
    env = out[1]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "X", "value": "1"}, {"name": "CALICO_IPV4POOL_CIDR", "value": "10.244.0.0/16"}]
    with pytest.raises(Exception, match="no calico-node DaemonSet"):
        pod_network.calico_documents(documents[:1], "10.244.0.0/16")


# -- network policies ----------------------------------------------------------------------


def test_each_managed_namespace_gets_a_default_deny_and_the_allows() -> None:
    docs = network_policy.documents(SETTINGS.echo1.network_policies)
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert kinds[:2] == [("Namespace", "hvsuite-apps"), ("NetworkPolicy", "default-deny")]
    deny = docs[1]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    web = next(d for d in docs if d["metadata"]["name"] == "web-from-anywhere")["spec"]
    assert web == {
        "podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 8080}]}
        ],
    }
    egress = next(d for d in docs if d["metadata"]["name"] == "egress-within-namespace")["spec"]
    assert egress["egress"] == [{"to": [{"podSelector": {}}]}]
    assert network_policy.wanted(SETTINGS.echo1.network_policies) == {
        "hvsuite-apps/default-deny",
        "hvsuite-apps/web-from-anywhere",
        "hvsuite-apps/within-namespace",
        "hvsuite-apps/egress-within-namespace",
    }


def test_an_allow_for_an_unmanaged_namespace_is_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError, match=r"namespace 'elsewhere'.*add it there"):
        _settings(
            network_policies={
                "namespaces": ["apps"],
                "allow": [{"name": "a", "namespace": "elsewhere", "peers": ["world"]}],
            }
        )
    with pytest.raises(ValidationError, match="not a CIDR"):
        _settings(
            network_policies={
                "namespaces": ["apps"],
                "allow": [{"name": "a", "namespace": "apps", "peers": ["everyone"]}],
            }
        )


def test_policies_no_longer_configured_are_deleted() -> None:
    conn = FakeConnection()
    unchanged = CommandSucceeds(f"{KUBECTL} diff -f {MANIFEST_DIR}/network-policies.yaml >/dev/null")
    conn.respond(unchanged.command, (0, "yes\n", ""))
    conn.respond(
        re.compile(r".*get networkpolicies.*"), (0, "hvsuite-apps/default-deny\nhvsuite-apps/old-rule\n", "")
    )
    host = fake_host(conn, mode="check")
    applied = network_policy.apply(fake_context(host, SETTINGS, profile="scratch"))
    would = [r.op for r in applied.changes]
    assert "command delete network policy hvsuite-apps/old-rule (no longer configured)" in would
    assert not any("default-deny (no longer" in op for op in would)


# -- load balancer -------------------------------------------------------------------------


def test_a_pool_inside_the_scratch_subnet_must_be_kept_free_of_servers() -> None:
    with pytest.raises(ValidationError, match=r"10\.231\.0\.16/29 lies in scratch\.subnet.*keep_free"):
        _settings(load_balancer={"pool": ["10.231.0.16/29"], "ports": ["load-balancer-http"]})


def test_a_load_balancer_port_must_be_declared() -> None:
    settings = _settings(load_balancer={"pool": ["10.231.0.240/29"], "ports": ["https"]})
    host = fake_host(FakeConnection(), mode="check")
    with pytest.raises(ValueError, match=r"no rule named 'https' for team Echo-1"):
        load_balancer.apply(fake_context(host, settings, profile="scratch"))
    assert host.changes == []


def test_an_empty_pool_stops_the_step_with_the_field_to_set() -> None:
    settings = _settings(load_balancer={"pool": [], "ports": []})
    host = fake_host(FakeConnection(), mode="check")
    with pytest.raises(Exception, match=r"echo1\.load_balancer\.pool is empty"):
        load_balancer.sync_config(fake_context(host, settings, profile="scratch"))


def _service(
    name: str, port: int = 80, *, ip: str | None = None, wanted: str | None = None, at: str = "1"
) -> dict:
    return {
        "metadata": {"namespace": "ns", "name": name, "creationTimestamp": at},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "ports": [{"port": port, "protocol": "TCP"}],
            **({"loadBalancerIP": wanted} if wanted else {}),
        },
        "status": {"loadBalancer": {"ingress": [{"ip": ip}]} if ip else {}},
    }


def test_the_allocator_keeps_given_addresses_honours_wishes_and_refuses_undeclared_ports() -> None:
    sync = _sync_program()
    pool = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    services = [
        _service("new", at="3"),
        _service("kept", ip="10.0.0.2", at="2"),
        _service("wish", wanted="10.0.0.3", at="4"),
        _service("odd-port", port=8443, at="1"),
        {"metadata": {"namespace": "ns", "name": "plain"}, "spec": {"type": "ClusterIP", "ports": []}},
    ]
    given, complaints = sync.allocate(services, pool, {80})
    assert given == {"ns/kept": "10.0.0.2", "ns/new": "10.0.0.1", "ns/wish": "10.0.0.3"}
    assert complaints == ["ns/odd-port: ports [8443] are not declared for the load balancer"]
    config = sync.haproxy_config(services, given)
    assert "bind 10.0.0.2:80" in config and "server service 10.96.0.10:80 check" in config
    assert "8443" not in config


def test_the_allocator_says_when_the_pool_is_exhausted() -> None:
    given, complaints = _sync_program().allocate([_service("a"), _service("b", at="2")], ["10.0.0.1"], {80})
    assert given == {"ns/a": "10.0.0.1"}
    assert complaints == ["ns/b: the pool is exhausted"]


def test_the_host_addresses_are_read_from_ip() -> None:
    output = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
        "2: eth0    inet 10.231.0.2/24 brd 10.231.0.255 scope global eth0\\       valid_lft forever\n"
        "2: eth0    inet 10.231.0.240/32 scope global eth0\\       valid_lft forever\n"
    )
    assert load_balancer.HostAddresses().parse(output) == {"127.0.0.1", "10.231.0.2", "10.231.0.240"}


# -- the firewall holds declared ports for forwarded connections ---------------------------


def test_the_firewall_polices_connections_to_the_host_before_kubernetes_forwards_them() -> None:
    text = firewall.render(SETTINGS, ["10.231.0.1/32"])
    prerouting = text[text.index("chain prerouting") : text.index("chain input")]
    assert "fib daddr type != local accept" in prerouting
    assert 'ip saddr { 10.231.0.1/32 } tcp dport 8088 accept comment "hostport-check (Echo-1)"' in prerouting
    assert prerouting.rstrip().splitlines()[-2].strip().startswith("meta l4proto { tcp, udp } counter drop")


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed")
def test_the_rendered_ruleset_is_valid_nftables(tmp_path: Path) -> None:
    rules = tmp_path / "rules.nft"
    rules.write_text(firewall.render(SETTINGS, ["10.231.0.1/32"]).replace("delete table", "# delete table"))
    checked = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
