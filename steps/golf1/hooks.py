"""Team Golf-1's contributions to earlier teams' extension points."""

from __future__ import annotations

from apply.extensions import hookimpl


@hookimpl
def prometheus_admin_api(settings: object) -> bool:
    # The backup takes Prometheus' TSDB snapshot through the admin API.
    return bool(settings.golf1.prometheus_snapshot)  # type: ignore[attr-defined]
