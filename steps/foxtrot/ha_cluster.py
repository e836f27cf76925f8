"""Team Foxtrot's apply, in order: the nodes' software, the virtual IP, the endpoint, etcd,
the joins, the pod routes. Each part is a step of its own module; this one only orders them
over the hosts (the primary's context, the further control planes', the workers')."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from apply.api import Context, Step
from steps.delta import kubernetes
from steps.foxtrot import endpoint, nodes, pod_routes, vip


def apply(primary: Context, control_planes: Sequence[Context], workers: Sequence[Context]) -> None:
    primary.settings.foxtrot.require_virtual_ip()  # before any change
    # The new nodes' software, side by side: each host has its own connection and locks.
    new_nodes = [*control_planes, *workers]
    with ThreadPoolExecutor(max_workers=max(1, len(new_nodes))) as pool:
        for prepared in [pool.submit(nodes.prepare, node) for node in new_nodes]:
            prepared.result()
    # The control-plane hosts first: the address starts on one of them, not on the primary.
    for host in [*control_planes, primary]:
        vip.apply(host)
    endpoint.apply(primary)
    external = primary.settings.delta.resolved_etcd(primary.profile) == "external"
    if external:
        nodes.primary_member(primary)
    members = [(kubernetes.node_name(primary), primary.address)]
    for node in control_planes:
        members.append((kubernetes.node_name(node), node.address))
        joined = list(members)
        Step(
            "Join as a control plane",
            lambda n, joined=joined: nodes.join_control_plane(primary, n, joined, external),
        )(node)
    for node in workers:
        Step("Join as a worker", lambda n: nodes.join_worker(primary, n))(node)
    if primary.settings.echo1.pod_network.resolved_plugin(primary.profile) == "bridge":
        routes = pod_routes.node_routes(primary.host) if primary.mode != "verify" else []
        for node in [primary, *control_planes, *workers]:
            Step("Pod routes between the nodes", lambda n: pod_routes.apply_on(n, routes))(node)
