"""Team Delta's extension points: what later teams contribute to its cluster."""

from __future__ import annotations

from apply.extensions import hookspec


@hookspec(firstresult=True)
def pod_network_bridge(settings: object) -> str | None:
    """The Linux bridge the node's pod network puts pods on, so that Delta's bootstrap bridge
    is the same one (its pods keep their network when the pod network replaces it)."""
