"""The settings of Team Charlie (the config's [charlie] section): Prometheus, node_exporter and Grafana."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from settings.base import Strict, TeamSettings


class GrafanaSettings(Strict):
    """Grafana from its pinned upstream .deb (not in Debian/Ubuntu archives)."""

    # Key of the pin in [artifacts]: version, url, sha256 and dest (a .deb path on the target).
    artifact: str = "grafana"
    admin_user: str = Field("admin", pattern=r"^[a-z][a-z0-9_-]*$")
    # The generated admin password is kept on the target, readable by root only.
    admin_password_file: str = "/etc/grafana/hvsuite-admin-password"
    datasource_uid: str = Field("hvsuite-prometheus", pattern=r"^[a-zA-Z0-9_-]{1,40}$")
    dashboard_uid: str = Field("hvsuite-host", pattern=r"^[a-zA-Z0-9_-]{1,40}$")


class CharlieSettings(TeamSettings):
    """Team Charlie: Prometheus and node_exporter from the OS archive, Grafana pinned.
    Their ports are the rules named prometheus, node-exporter and grafana in [[ports]]."""

    section: ClassVar[str] = "charlie"

    prometheus_package: str = "prometheus"
    node_exporter_package: str = "prometheus-node-exporter"
    scrape_interval: str = Field("15s", pattern=r"^[1-9][0-9]*(ms|s|m)$")
    evaluation_interval: str = Field("15s", pattern=r"^[1-9][0-9]*(ms|s|m)$")
    retention: str = Field("15d", pattern=r"^[1-9][0-9]*[hdwy]$")
    # Label every series with the host's role so dashboards and alerts can select it.
    external_labels: dict[str, str] = {"role": "hypervisor"}
    grafana: GrafanaSettings = GrafanaSettings()
