"""Team Foxtrot's contributions to Team Delta's extension points."""

from __future__ import annotations

from typing import Any

from apply.extensions import hookimpl
from settings.base import Role

API_PORT_TEAM = "Foxtrot"


@hookimpl
def control_plane_endpoint(settings: Any) -> str | None:
    # The API through the virtual IP, as HAProxy on every control-plane host serves it.
    foxtrot = settings.foxtrot
    if foxtrot.virtual_ip is None:
        return None
    return foxtrot.endpoint(settings.port(API_PORT_TEAM, foxtrot.api_port))


@hookimpl
def etcd_clustered(settings: Any) -> bool:
    # etcd members join the primary's on the inventory's control-plane hosts.
    return any(Role.CONTROL_PLANE in host.roles for host in settings.hosts)
