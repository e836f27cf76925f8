"""Team Echo-1: the pod network of the node (a CNI plugin chain on the node's pod CIDR).

"bridge" is Debian's containernetworking-plugins as one chain: ``bridge`` (a Linux bridge,
the node as the pods' gateway, masquerade for traffic leaving the pod CIDR) with
``host-local`` addresses from the pod CIDR the controller manager gave the node,
``portmap`` (hostPort), ``bandwidth`` (the ``kubernetes.io/ingress-bandwidth`` and
``egress-bandwidth`` annotations, as tc token buckets) and ``loopback``. It enforces no
NetworkPolicy. "calico" is Calico's pinned upstream manifest, which does.

Team Delta needs some pod network before its node can be Ready: :func:`bootstrap` writes a
plain bridge on the same network name (so both share host-local's address store) only where
the node has no pod network yet; Echo-1 replaces it and owns the config directory's suite
files from then on.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from apply import ops
from apply.api import Context, step
from apply.facts import Fact
from apply.runner import ApplyError, Host
from steps.delta.kubectl import apply_manifest, kubectl, pinned_documents, wait, wait_rollout
from steps.delta.kubernetes import node_name

NETWORK_NAME = "hvsuite-pods"
# containerd uses the lexically first config: Echo-1's sorts before Delta's bootstrap.
CHAIN = "10-hvsuite-pods.conflist"
BOOTSTRAP = "99-hvsuite-bootstrap.conflist"
# What earlier versions of the suite wrote for Delta.
RETIRED = ("10-hvsuite-bridge.conflist",)
CNI_VERSION = "0.4.0"


@dataclass(frozen=True)
class CniConfigs(Fact[list[str]]):
    """The network config files in a CNI config directory, sorted as containerd reads them."""

    directory: str

    @property
    def command(self) -> str:
        path = shlex.quote(self.directory)
        return f"[ -d {path} ] && find {path} -maxdepth 1 -type f -printf '%f\\n' || true"

    def parse(self, output: str) -> list[str]:
        names = [line.strip() for line in output.splitlines()]
        return sorted(n for n in names if n.endswith((".conf", ".conflist", ".json")))


@dataclass(frozen=True)
class TokenBucket:
    device: str
    rate: int  # bit/s
    burst: int  # bytes


@dataclass(frozen=True)
class TokenBuckets(Fact[list[TokenBucket]]):
    """The tbf qdiscs of the host (the bandwidth plugin's, on the pods' host-side veths)."""

    @property
    def command(self) -> str:
        return "tc -j qdisc show"

    def parse(self, output: str) -> list[TokenBucket]:
        # tc reports the rate in bytes per second.
        return [
            TokenBucket(q["dev"], int(q["options"]["rate"]) * 8, int(q["options"]["burst"]))
            for q in json.loads(output or "[]")
            if q.get("kind") == "tbf"
        ]


def token_bucket(buckets: list[TokenBucket], rate: float) -> TokenBucket:
    """The one token bucket shaping at ``rate`` bit/s."""
    matching = [bucket for bucket in buckets if bucket.rate == rate]
    if len(matching) != 1:
        raise AssertionError(f"expected one token bucket at {rate:g} bit/s, found {buckets}")
    return matching[0]


def node_pod_cidr(host: Host, node: str, timeout: float) -> str:
    """The pod CIDR the controller manager assigned to ``node`` (waits for it)."""
    read = kubectl("get", "node", node, "-o", "jsonpath={.spec.podCIDR}")
    wait(host, f"a pod CIDR for node {node}", f'[ -n "$({read})" ]', timeout)
    return host.run(read).stdout.strip()


def conflist(subnet: str, bridge: str, *, chain: bool) -> str:
    """The network config: the bridge on ``subnet``; with ``chain``, Echo-1's whole chain."""
    plugins: list[dict[str, Any]] = [
        {
            "type": "bridge",
            "bridge": bridge,
            "isGateway": True,
            "ipMasq": True,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        },
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
    ]
    if chain:
        plugins += [
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
            # Passes the previous result on; brings up the pod's lo (containerd does too).
            {"type": "loopback"},
        ]
    owner = "Team Echo-1" if chain else "Team Delta, until Team Echo-1's pod network replaces it"
    document = {
        "_comment": f"Managed by hvsuite ({owner}).",
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": plugins,
    }
    return json.dumps(document, indent=2) + "\n"


def bootstrap(ctx: Context, node: str) -> None:
    """Delta's: a plain bridge so that the node becomes Ready, where no pod network exists."""
    host, settings = ctx.host, ctx.settings
    directory = settings.bravo.cni_conf_dir
    if any(name != BOOTSTRAP for name in host.fact(CniConfigs(directory))):
        return
    cidr = node_pod_cidr(host, node, settings.delta.ready_timeout)
    ops.file(host, f"{directory}/{BOOTSTRAP}", conflist(cidr, settings.echo1.pod_network.bridge, chain=False))


@step("Pod network")
def apply(ctx: Context) -> None:
    host, settings = ctx.host, ctx.settings
    directory = settings.bravo.cni_conf_dir
    retired = [BOOTSTRAP, *RETIRED]
    if settings.echo1.pod_network.resolved_plugin(ctx.profile) == "calico":
        _calico(ctx)
        retired.append(CHAIN)
    else:
        cidr = node_pod_cidr(host, node_name(ctx), settings.delta.ready_timeout)
        bridge = settings.echo1.pod_network.bridge
        ops.file(host, f"{directory}/{CHAIN}", conflist(cidr, bridge, chain=True))
    for name in retired:
        ops.absent(host, f"{directory}/{name}")


def calico_documents(documents: list[dict[str, Any]], pod_subnet: str) -> list[dict[str, Any]]:
    """Calico's manifest with its IP pool on the cluster's pod subnet (the manifest leaves
    CALICO_IPV4POOL_CIDR unset)."""
    for doc in documents:
        if doc.get("kind") == "DaemonSet" and doc["metadata"]["name"] == "calico-node":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["name"] == "calico-node":
                    env = [e for e in container.get("env", []) if e["name"] != "CALICO_IPV4POOL_CIDR"]
                    container["env"] = [*env, {"name": "CALICO_IPV4POOL_CIDR", "value": pod_subnet}]
                    return documents
    raise ApplyError("the pinned Calico manifest has no calico-node DaemonSet: is it calico.yaml?")


def _calico(ctx: Context) -> None:
    host, settings = ctx.host, ctx.settings
    documents = pinned_documents(ctx, settings.echo1.pod_network.calico_manifest)
    apply_manifest(host, "calico", calico_documents(documents, settings.delta.pod_subnet))
    if host.mode == "apply":
        wait_rollout(host, "kube-system", "daemonset/calico-node", settings.delta.ready_timeout)
