"""Team Delta's extension points: what later teams contribute to its cluster."""

from __future__ import annotations

from apply.extensions import hookspec


@hookspec(firstresult=True)
def pod_network_bridge(settings: object) -> str | None:
    """The Linux bridge the node's pod network puts pods on, so that Delta's bootstrap bridge
    is the same one (its pods keep their network when the pod network replaces it)."""


@hookspec(firstresult=True)
def control_plane_endpoint(settings: object) -> str | None:
    """The cluster's stable API address, ``"host:port"`` (a virtual IP in front of every
    control plane). Delta puts its host in the API server's certificate from the first
    ``kubeadm init``; the team that brings the address up moves the cluster onto it."""


@hookspec(firstresult=True)
def etcd_clustered(settings: object) -> bool | None:
    """Whether etcd members on other hosts join the primary's: etcd then serves its peers and
    clients on the host's address too, not on loopback alone."""
