"""Team Echo-1: the pod network of the node (a CNI plugin chain on the node's pod CIDR).

"bridge" is Debian's containernetworking-plugins as one chain: ``bridge`` (a Linux bridge,
the node as the pods' gateway, masquerade for traffic leaving the pod CIDR) with
``host-local`` addresses from the pod CIDR the controller manager gave the node,
``portmap`` (hostPort), ``bandwidth`` (the ``kubernetes.io/ingress-bandwidth`` and
``egress-bandwidth`` annotations, as tc token buckets) and ``loopback``. It enforces no
NetworkPolicy. "calico" is Calico's pinned upstream manifest, which does.

Team Delta needs some pod network before its node can be Ready: its bootstrap bridge
(`steps.delta.pod_network`) uses the same network name and, through Echo-1's contribution
(`steps.echo1.hooks`), the same bridge; Echo-1 replaces it with the chain built on Delta's
bridge plugins and owns the config directory's suite files from then on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from apply import ops
from apply.api import Context, step
from apply.facts import Fact
from apply.runner import ApplyError
from steps.delta import pod_network as bootstrap_network
from steps.delta.kubectl import apply_manifest, pinned_documents, wait_rollout
from steps.delta.kubernetes import node_name

# containerd uses the lexically first config: Echo-1's sorts before Delta's bootstrap.
CHAIN = "10-hvsuite-pods.conflist"
# What earlier versions of the suite wrote for Delta.
RETIRED = ("10-hvsuite-bridge.conflist",)


def chain(subnet: str, bridge: str) -> str:
    """Echo-1's network config: Delta's bridge on ``subnet``, then bandwidth and loopback."""
    plugins = [
        *bootstrap_network.bridge_plugins(subnet, bridge),
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        # Passes the previous result on; brings up the pod's lo (containerd does too).
        {"type": "loopback"},
    ]
    return bootstrap_network.conflist(plugins, "Team Echo-1")


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


@step("Pod network")
def apply(ctx: Context) -> None:
    host, settings = ctx.host, ctx.settings
    directory = settings.bravo.cni_conf_dir
    retired = [bootstrap_network.BOOTSTRAP, *RETIRED]
    if settings.echo1.pod_network.resolved_plugin(ctx.profile) == "calico":
        _calico(ctx)
        retired.append(CHAIN)
    else:
        cidr = bootstrap_network.node_pod_cidr(host, node_name(ctx), settings.delta.ready_timeout)
        ops.file(host, f"{directory}/{CHAIN}", chain(cidr, settings.echo1.pod_network.bridge))
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
