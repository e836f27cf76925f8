"""Team Foxtrot: routes between the nodes' pod subnets, for Echo-1's bridge pod network.

The bridge chain puts each node's pods on a bridge of its own, on the pod CIDR the
controller manager gave the node; nothing carries a packet for another node's pods there. On
each node a oneshot unit (``hvsuite-pod-routes``) routes every other node's pod CIDR via that
node's address, as flannel's host-gw does; it runs again at boot. Calico routes by itself.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from apply import ops
from apply.api import Context
from apply.facts import Fact
from apply.runner import Host
from steps.delta.kubectl import kubectl

TEMPLATES = Path(__file__).parent / "templates"
UNIT = "hvsuite-pod-routes"


@dataclass(frozen=True)
class NodeRoute:
    node: str
    pod_cidr: str
    address: str


def node_routes(primary: Host) -> list[NodeRoute]:
    """Every node's pod CIDR and internal address, as the API has them."""
    table = kubectl(
        "get", "nodes", "-o",
        'jsonpath={range .items[*]}{.metadata.name} {.spec.podCIDR} '
        '{.status.addresses[?(@.type=="InternalIP")].address}{"\\n"}{end}',
    )  # fmt: skip
    found = []
    for line in primary.run(table).stdout.splitlines():
        fields = line.split()
        if len(fields) == 3:
            found.append(NodeRoute(*fields))
    return found


def routes_for(address: str, routes: list[NodeRoute]) -> list[NodeRoute]:
    """The routes the node at ``address`` needs: every other node's pod CIDR."""
    return sorted((r for r in routes if r.address != address), key=lambda r: ipaddress.ip_network(r.pod_cidr))


@dataclass(frozen=True)
class LiveRoutes(Fact[set[tuple[str, str]]]):
    """(destination, gateway) of the host's IPv4 routes via a gateway."""

    @property
    def command(self) -> str:
        return "ip -4 route show"

    def parse(self, output: str) -> set[tuple[str, str]]:
        found = set()
        for line in output.splitlines():
            words = line.split()
            if "via" in words:
                found.add((words[0], words[words.index("via") + 1]))
        return found


def apply_on(node: Context, routes: list[NodeRoute]) -> None:
    host = node.host
    wanted = routes_for(node.address, routes)
    unit = ops.template(
        host, f"/etc/systemd/system/{UNIT}.service", TEMPLATES / "pod-routes.service.j2", {"routes": wanted}
    )
    ops.daemon_reload(host, force=unit.changed)
    live = host.fact(LiveRoutes())
    drifted = any((r.pod_cidr, r.address) not in live for r in wanted)
    ops.service(host, UNIT, enabled=True, running=True, restart=unit.changed or drifted)
