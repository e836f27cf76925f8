"""Team Charlie: Grafana from its pinned upstream .deb, with a provisioned Prometheus
datasource and a host dashboard.

Grafana is in neither Debian's nor Ubuntu's archive: the .deb is an artifact pinned in
settings (``[artifacts.grafana]``: version, url, sha256, dest), fetched and checked on the
controller and copied to ``dest`` before :func:`apply` installs it. The admin password is
generated on the target and never leaves it except to the verification's API calls, which
register it as a secret.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from apply import artifacts, ops
from apply.api import Context, step
from settings.base import ArtifactPin
from settings.model import Settings

TEMPLATES = Path(__file__).parent / "templates"


SERVICE = "grafana-server"
PACKAGE = "grafana"
PROVISIONING = "/etc/grafana/provisioning"
DASHBOARDS_DIR = "/var/lib/grafana/dashboards/hvsuite"


def grafana_pin(settings: Settings) -> ArtifactPin:
    """The pinned Grafana .deb, or an error telling the operator exactly what to add."""
    key = settings.charlie.grafana.artifact
    pin = settings.artifacts.get(key)
    if pin is None:
        raise ValueError(
            f"artifacts.{key} is not set: Grafana comes from a pinned .deb. Add to your config:\n"
            f"  [artifacts.{key}]\n"
            '  version = "<x.y.z>"\n'
            '  url = "https://dl.grafana.com/oss/release/grafana_<x.y.z>_amd64.deb"\n'
            '  sha256 = "<sha256 of that file: Grafana publishes it beside the .deb as .sha256>"\n'
            '  dest = "/var/cache/hvsuite/grafana_<x.y.z>_amd64.deb"\n'
            '  mode = "0644"\n'
            "or waive upstream-artifacts in the target profile."
        )
    if not pin.dest.endswith(".deb"):
        raise ValueError(f"artifacts.{key}.dest must be the path of the .deb on the target, got {pin.dest!r}")
    return pin


def dashboard(uid: str, datasource_uid: str) -> dict[str, Any]:
    """The host dashboard: CPU, memory, load, filesystem and network from node_exporter."""
    datasource = {"type": "prometheus", "uid": datasource_uid}
    panels = [
        (
            "CPU busy %",
            '100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m])))',
            "percent",
        ),
        (
            "Memory used %",
            "100 * (1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)",
            "percent",
        ),
        ("Load average (1m)", "node_load1", "short"),
        (
            "Root filesystem used %",
            '100 * (1 - node_filesystem_avail_bytes{mountpoint="/"}'
            ' / node_filesystem_size_bytes{mountpoint="/"})',
            "percent",
        ),
        ("Network received", 'rate(node_network_receive_bytes_total{device!="lo"}[5m])', "Bps"),
        ("Network transmitted", 'rate(node_network_transmit_bytes_total{device!="lo"}[5m])', "Bps"),
    ]
    return {
        "uid": uid,
        "title": "Hypervisor host",
        "tags": ["hvsuite", "node"],
        "timezone": "utc",
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "panels": [
            {
                "id": index + 1,
                "type": "timeseries",
                "title": title,
                "datasource": datasource,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [{"refId": "A", "datasource": datasource, "expr": expr}],
            }
            for index, (title, expr, unit) in enumerate(panels)
        ],
    }


def password_commands(path: str) -> tuple[str, str]:
    """``(generate, valid)`` for the admin password file: ``generate`` writes a new random
    password; ``valid`` succeeds while the file holds one (a single line of 32 or more letters
    and digits), so a missing, emptied or hand-edited file is generated again."""
    q = shlex.quote(path)
    generate = f"umask 077 && head -c 32 /dev/urandom | base64 | tr -d '/+=\\n' > {q}"
    valid = f"test -f {q} && test \"$(wc -l < {q})\" -le 1 && grep -qxE '[A-Za-z0-9]{{32,}}' {q}"
    return generate, valid


@step("Grafana")
def apply(ctx: Context) -> None:
    """Grafana's checked .deb copied and installed, provisioned and serving."""
    host, settings, store = ctx.host, ctx.settings, ctx.require_artifacts()
    grafana = settings.charlie.grafana
    pin = grafana_pin(settings)
    port = settings.port("Charlie", "grafana")
    prometheus_url = f"http://127.0.0.1:{settings.port('Charlie', 'prometheus')}"
    version = pin.version.removeprefix("v")
    password_file = shlex.quote(grafana.admin_password_file)
    installed_version = f"dpkg-query -W -f='${{Version}}' {PACKAGE} 2>/dev/null"
    with host.step(f"Grafana {version}"):
        artifacts.install(host, store, settings.charlie.grafana.artifact, pin)
        ops.command(
            host,
            f"{ops.APT_GET} install --no-install-recommends {shlex.quote(pin.dest)}",
            unless=f'test "$({installed_version})" = {shlex.quote(version)}',
            name=f"install {PACKAGE} {version} from {pin.dest}",
            lock="apt",
        )
        generate, valid = password_commands(grafana.admin_password_file)
        password = ops.command(
            host,
            generate,
            unless=valid,
            name=f"generate the Grafana admin password in {grafana.admin_password_file}",
        )
        # Grafana reads it through GF_SECURITY_ADMIN_PASSWORD__FILE as user grafana.
        ops.command(
            host,
            f"chown root:grafana {password_file} && chmod 0640 {password_file}",
            unless=f'test "$(stat -c %U:%G:%a {password_file})" = root:grafana:640',
            name="Grafana admin password readable by grafana only",
        )
        ops.directory(host, f"/etc/systemd/system/{SERVICE}.service.d")
        dropin = ops.template(
            host,
            f"/etc/systemd/system/{SERVICE}.service.d/hvsuite.conf",
            TEMPLATES / "grafana-server.service.conf.j2",
            {"port": port, "admin_user": grafana.admin_user, "password_file": grafana.admin_password_file},
        )
        ops.daemon_reload(host, force=dropin.changed)
        provisioned = [
            ops.template(
                host,
                f"{PROVISIONING}/datasources/hvsuite.yaml",
                TEMPLATES / "grafana-datasource.yaml.j2",
                {"uid": grafana.datasource_uid, "url": prometheus_url},
                group="grafana",
                mode="0640",
            ),
            ops.template(
                host,
                f"{PROVISIONING}/dashboards/hvsuite.yaml",
                TEMPLATES / "grafana-dashboards.yaml.j2",
                {"path": DASHBOARDS_DIR},
                group="grafana",
                mode="0640",
            ),
            ops.directory(host, DASHBOARDS_DIR),
            ops.file(
                host,
                f"{DASHBOARDS_DIR}/host.json",
                json.dumps(dashboard(grafana.dashboard_uid, grafana.datasource_uid), indent=2) + "\n",
            ),
        ]
        ops.service(
            host,
            SERVICE,
            enabled=True,
            running=True,
            restart=dropin.changed or any(result.changed for result in provisioned),
        )
        if password.changed and host.mode == "apply":
            # An existing database keeps its old password: set the generated one explicitly.
            host.run(
                "grafana cli --homepath /usr/share/grafana admin reset-admin-password --password-from-stdin "
                f"< {shlex.quote(grafana.admin_password_file)}"
            )
