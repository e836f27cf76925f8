"""Team Foxtrot: further nodes joined to the cluster, two more control planes and workers.

Each new node gets what the primary got from the earlier teams, by their own steps: Alpha's
firewall, Bravo's containerd, Delta's node software (binaries, images, kubelet). A control
plane then gets the cluster's certificate authorities and service-account key from the
primary (kubeadm's "manual certificate distribution"), and, where etcd runs outside kubeadm
(Delta's ``external`` etcd), a member of the primary's etcd on the node: added as a learner,
started by Delta's etcd step, promoted once it has caught up, so the cluster never waits for a
member that is not running. Then ``kubeadm join`` through the control-plane endpoint with a
short-lived bootstrap token, and Echo-1's pod network on the node.
"""

from __future__ import annotations

import json
import secrets
import shlex
import string
from collections.abc import Sequence
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.poll import eventually
from apply.runner import ApplyError, Host
from steps.alpha import firewall
from steps.bravo import containerd
from steps.delta import etcd, kubeadm_config, kubernetes
from steps.delta.kubectl import kubectl
from steps.delta.pod_network import node_pod_cidr
from steps.echo1 import pod_network

TEMPLATES = Path(__file__).parent / "templates"

PKI = "/etc/kubernetes/pki"
# What every control plane shares (kubeadm's list for copying certificates by hand).
SHARED_PKI = (
    "ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key",
    "etcd/ca.crt", "etcd/ca.key",
)  # fmt: skip
JOIN_CONFIG = "/etc/kubernetes/hvsuite-join.yaml"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
MEMBER_ENV = "/etc/etcd/hvsuite-member.env"
MEMBER_DROPIN = f"/etc/systemd/system/{etcd.SERVICE}.service.d/member.conf"
ETCDCTL = (
    f"ETCDCTL_API=3 etcdctl --endpoints={etcd.CLIENT_URL} --cacert={etcd.CA} "
    f"--cert={etcd.CLIENT_CERT} --key={etcd.CLIENT_KEY}"
)


@step("Node software (firewall, containerd, Kubernetes)")
def prepare(ctx: Context) -> None:
    """The earlier teams' steps for a node, run on this one."""
    for node_step in (firewall.apply, containerd.apply, kubernetes.apply):
        node_step(ctx)


def etcd_members(host: Host) -> list[dict]:
    """The primary's etcd members (name, peer URLs, learner) as etcd lists them."""
    listed = json.loads(host.run(f"{ETCDCTL} member list -w json").stdout)
    return [
        {
            "id": f"{member['ID']:x}",
            "name": member.get("name", ""),
            "peers": member.get("peerURLs", []),
            "learner": bool(member.get("isLearner")),
        }
        for member in listed.get("members", [])
    ]


def initial_cluster(members: Sequence[tuple[str, str]]) -> str:
    """etcd's ``--initial-cluster`` for (name, address) pairs."""
    return ",".join(f"{name}={etcd.peer_url(address)}" for name, address in members)


@step("etcd: the primary's member on its address")
def primary_member(primary: Context) -> None:
    """The primary's member advertises its peer URL on the host's address (a cluster built
    before others could join advertises loopback), and serves there (Delta's etcd step,
    which renders the clustered settings once members on other hosts are declared)."""
    host = primary.host
    etcd.apply(primary)
    if host.mode != "apply" and not host.read(etcd.ENV_FILE):
        return  # a dry run on a host where etcd does not run yet: no member to compare
    own = etcd.peer_url(primary.address)
    members = etcd_members(host)
    me = next(m for m in members if m["name"] == kubernetes.node_name(primary))
    host.execute(
        f"etcd member {me['name']}: peer URL {own}",
        [] if me["peers"] == [own] else [f"{ETCDCTL} member update {me['id']} --peer-urls={own}"],
    )


def shared_pki(primary: Context, node: Context) -> None:
    """The cluster's certificate authorities and service-account key copied to ``node``."""
    for name in SHARED_PKI:
        data = primary.host.read(f"{PKI}/{name}")
        if data is None:
            raise ApplyError(f"[{primary.host.name}] {PKI}/{name} is missing: is the cluster initialised?")
        ops.directory(node.host, str(Path(f"{PKI}/{name}").parent))
        secret = name.endswith(".key")
        ops.file(node.host, f"{PKI}/{name}", data, mode="0600" if secret else "0644", sensitive=secret)


def etcd_member(primary: Context, node: Context, members: Sequence[tuple[str, str]]) -> None:
    """``node``'s etcd member: added to the cluster as a learner (members lists the members up
    to and including it, as (name, address)), started, and promoted once in sync."""
    host = node.host
    name, address = members[-1]
    ops.directory(host, "/etc/etcd")
    env = ops.file(
        host,
        MEMBER_ENV,
        f"ETCD_INITIAL_CLUSTER={initial_cluster(members)}\nETCD_INITIAL_CLUSTER_STATE=existing\n",
    )
    ops.directory(host, str(Path(MEMBER_DROPIN).parent))
    dropin = ops.template(host, MEMBER_DROPIN, TEMPLATES / "etcd-member.conf.j2", {"env_file": MEMBER_ENV})
    ops.daemon_reload(host, force=dropin.changed or env.changed)
    # By peer URL: a member added but not started yet has no name.
    url = etcd.peer_url(address)
    if not any(url in m["peers"] for m in etcd_members(primary.host)):
        primary.host.execute(
            f"etcd member {name} added (learner)",
            [f"{ETCDCTL} member add {shlex.quote(name)} --learner --peer-urls={url}"],
        )
    etcd.apply(node)
    if host.mode != "apply":
        return
    member = next(m for m in etcd_members(primary.host) if url in m["peers"])
    if member["learner"]:
        # etcd refuses to promote a learner that has not caught up with the leader yet.
        promote = f"until {ETCDCTL} member promote {member['id']}; do sleep 2; done"
        timeout = int(node.settings.delta.ready_timeout)
        primary.host.execute(
            f"etcd member {name} promoted", [f"timeout {timeout} sh -c {shlex.quote(promote)}"]
        )


def join(primary: Context, node: Context, *, control_plane: bool) -> None:
    """``kubeadm join`` of ``node`` through the endpoint, unless it is a node already."""
    host, settings = node.host, node.settings
    if host.read(KUBELET_CONF) is not None:
        host.unchanged(f"kubeadm join {node.address}", "already a node")
        return
    if host.mode != "apply":
        host.execute(f"kubeadm join {node.address}", ["kubeadm join --config ..."])
        return
    dist = kubernetes.distribution(settings, node.profile)
    # Made here, so that it is a secret before any host sees it (kubeadm's format).
    token = f"{_random(6)}.{_random(16)}"
    for each in (primary.host, host):
        each.redactor.add(token)
    primary.host.execute(
        "bootstrap token (15 min)", [f"kubeadm token create {token} --ttl 15m"], secrets=[token]
    )
    ca_hash = primary.host.run(
        f"openssl x509 -pubkey -in {PKI}/ca.crt | openssl pkey -pubin -outform der "
        "| openssl dgst -sha256 -hex | sed 's/^.* //'"
    ).stdout.strip()
    spec = kubeadm_config.JoinSpec(
        version=dist.version,
        node_name=kubernetes.node_name(node),
        advertise_address=node.address,
        endpoint=settings.foxtrot.endpoint(settings.port("Foxtrot", settings.foxtrot.api_port)),
        token=token,
        ca_cert_hash=f"sha256:{ca_hash}",
        control_plane=control_plane,
        bind_port=settings.port("Delta", kubernetes.API_PORT_NAME),
        has_crictl=dist.has_crictl,
    )
    ops.file(host, JOIN_CONFIG, kubeadm_config.render_join(spec), mode="0600", sensitive=True)
    skipped = kubeadm_config.join_skip_phases(spec)
    flags = f" --skip-phases={','.join(skipped)}" if skipped else ""
    try:
        host.execute(
            f"kubeadm join {node.address}" + (" (control plane)" if control_plane else ""),
            [f"kubeadm join --config {JOIN_CONFIG}{flags}"],
            secrets=[token],
        )
    finally:
        host.run(f"rm -f {JOIN_CONFIG}")


def _random(length: int) -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(length))


def pod_network_on(primary: Context, node: Context) -> None:
    """Echo-1's pod network on ``node``: its chain on the pod CIDR the node was given (read
    through the primary: the node itself holds no admin credentials)."""
    settings = node.settings
    plugin = settings.echo1.pod_network.resolved_plugin(node.profile)
    if plugin != "bridge":
        # Calico's DaemonSet brings the network to every node itself.
        node.host.unchanged("pod network", f"{plugin}: installed by its DaemonSet on every node")
        return
    if node.mode != "apply" and node.host.read(KUBELET_CONF) is None:
        return
    cidr = node_pod_cidr(primary.host, kubernetes.node_name(node), settings.delta.ready_timeout)
    directory = settings.bravo.cni_conf_dir
    ops.file(
        node.host,
        f"{directory}/{pod_network.CHAIN}",
        pod_network.chain(cidr, settings.echo1.pod_network.bridge),
    )


def node_ready(primary: Context, node: Context) -> None:
    if node.mode != "apply":
        return
    name = kubernetes.node_name(node)
    ready = kubectl("wait", "--for=condition=Ready", f"node/{name}", "--timeout=10s")
    if not eventually(
        lambda: primary.host.run(ready, check=False).ok, timeout=node.settings.delta.ready_timeout
    ):
        raise ApplyError(f"[{node.host.name}] node {name} is not Ready")


def join_control_plane(
    primary: Context, node: Context, members: Sequence[tuple[str, str]], external_etcd: bool
) -> None:
    """``node`` as a further control plane: the shared certificates, its etcd member (external
    etcd; ``members`` up to and including it), the join, the pod network, Ready."""
    shared_pki(primary, node)
    if external_etcd:
        etcd_member(primary, node, members)
    join(primary, node, control_plane=True)
    pod_network_on(primary, node)
    node_ready(primary, node)


def join_worker(primary: Context, node: Context) -> None:
    join(primary, node, control_plane=False)
    pod_network_on(primary, node)
    node_ready(primary, node)
