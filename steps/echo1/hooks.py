"""Team Echo-1's contributions to earlier teams' extension points."""

from __future__ import annotations

from apply.extensions import hookimpl


@hookimpl
def pod_network_bridge(settings: object) -> str:
    return settings.echo1.pod_network.bridge  # type: ignore[attr-defined]
