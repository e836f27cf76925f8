"""Team Golf-4's contributions to extension points: the finished run's reports published to
the dashboard on the primary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apply.extensions import hookimpl
from steps.golf4 import publish


@hookimpl
def run_finished(host: Any, settings: Any, reports_dir: Path, target_name: str, fleet: Any) -> None:
    # Where Golf-4 has not installed the dashboard, publish writes nothing.
    hosts = [publish.FleetHost(name, address, tuple(roles)) for name, address, roles in fleet]
    publish.publish(host, settings, reports_dir, target_name=target_name, fleet=hosts)
