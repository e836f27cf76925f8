"""Team Delta: a bootstrap pod network, so that the node becomes Ready.

A node is not Ready without a CNI network config. Where the node has none, Delta writes a
plain bridge (Debian's ``bridge`` and ``portmap`` plugins with ``host-local`` addresses from
the node's pod CIDR) under the network name a later team's pod network uses too, so both
share host-local's address store. That team (Echo-1) replaces it with its own chain and
removes :data:`BOOTSTRAP`; the bridge's name is its contribution (`steps.delta.hookspecs`).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from apply import ops
from apply.api import Context
from apply.extensions import hooks
from apply.facts import Fact
from apply.runner import Host
from steps.delta.kubectl import kubectl, wait

NETWORK_NAME = "hvsuite-pods"
# containerd uses the lexically first config: a pod network's own sorts before this one.
BOOTSTRAP = "99-hvsuite-bootstrap.conflist"
CNI_VERSION = "0.4.0"
# The bridge where no later team names one.
DEFAULT_BRIDGE = "cni0"


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


def node_pod_cidr(host: Host, node: str, timeout: float) -> str:
    """The pod CIDR the controller manager assigned to ``node`` (waits for it)."""
    read = kubectl("get", "node", node, "-o", "jsonpath={.spec.podCIDR}")
    wait(host, f"a pod CIDR for node {node}", f'[ -n "$({read})" ]', timeout)
    return host.run(read).stdout.strip()


def bridge_plugins(subnet: str, bridge: str) -> list[dict[str, Any]]:
    """A Linux bridge on ``subnet`` with the node as the pods' gateway, and hostPort."""
    return [
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


def conflist(plugins: list[dict[str, Any]], owner: str) -> str:
    """A network config of ``plugins`` on the suite's network name."""
    document = {
        "_comment": f"Managed by hvsuite ({owner}).",
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": plugins,
    }
    return json.dumps(document, indent=2) + "\n"


def bootstrap(ctx: Context, node: str) -> None:
    """A plain bridge so that the node becomes Ready, where no pod network exists."""
    host, settings = ctx.host, ctx.settings
    directory = settings.bravo.cni_conf_dir
    if any(name != BOOTSTRAP for name in host.fact(CniConfigs(directory))):
        return
    cidr = node_pod_cidr(host, node, settings.delta.ready_timeout)
    bridge = hooks().pod_network_bridge(settings=settings) or DEFAULT_BRIDGE
    owner = "Team Delta, until a pod network replaces it"
    ops.file(host, f"{directory}/{BOOTSTRAP}", conflist(bridge_plugins(cidr, bridge), owner))
