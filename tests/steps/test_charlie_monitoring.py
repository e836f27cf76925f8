"""Team Charlie's steps as data: settings in, configs and commands out, no SSH."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from apply import ops
from apply.extensions import hookimpl, plugin_manager
from apply.facts import AptListsAge, DebPackages, FileInfo, ServiceState
from apply.runner import Host
from apply.testing import FakeConnection, fake_context, fake_host
from settings.base import ArtifactPin
from settings.loader import load_settings
from settings.model import Settings
from steps.alpha import firewall
from steps.charlie import grafana, prometheus

ACTIVE = "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\n"
NOT_FOUND = "LoadState=not-found\nActiveState=inactive\nUnitFileState=\nNeedDaemonReload=no\n"
UNITS = (prometheus.PROMETHEUS, prometheus.NODE_EXPORTER)


def _config(settings: Settings) -> str:
    return prometheus.render_config(
        settings.charlie, prometheus_port=9095, node_exporter_port=9100, hostname="hv-1"
    )


def test_scrape_config_targets_the_declared_ports_and_labels_the_host() -> None:
    text = _config(load_settings())
    assert 'targets: ["127.0.0.1:9095"]' in text
    assert 'targets: ["127.0.0.1:9100"]' in text
    assert 'instance: "hv-1"' in text
    assert 'role: "hypervisor"' in text
    assert "9090" not in text  # flintlock's port, never Prometheus'
    assert re.search(r"^  scrape_interval: 15s$", text, re.MULTILINE)


def test_a_missing_port_declaration_names_the_fix() -> None:
    bare = Settings(ports=[{"name": "ssh", "team": "Alpha", "port": 22, "sources": ["world"]}])
    with pytest.raises(ValueError, match=r"ports: no rule named 'prometheus' for team Charlie; declare it"):
        bare.port("Charlie", "prometheus")


def test_metrics_ports_are_reachable_from_admin_sources_only() -> None:
    settings = load_settings()
    metrics = {settings.port("Charlie", name) for name in ("prometheus", "node-exporter", "grafana")}
    admins = ["10.231.0.0/24"]
    assert metrics <= firewall.allowed_ports(settings, admins, "10.231.0.7")
    assert not metrics & firewall.allowed_ports(settings, admins, "198.51.100.7")


def _fresh_host(tmp_path: Path) -> tuple[Host, FakeConnection]:
    conn = FakeConnection()
    conn.set_fact(DebPackages(), "")
    conn.set_fact(AptListsAge(), "now=1000\nnewest=900\n")
    for unit in UNITS:
        conn.set_fact(ServiceState(unit), NOT_FOUND)
    conn.respond("hostname", (0, "hv-1\n", ""))
    return fake_host(conn, lock_dir=tmp_path), conn


def _apply_fresh(tmp_path: Path, settings: Settings) -> tuple[Host, FakeConnection]:
    """prometheus.apply on a host without the packages; systemd knows the units once the
    install ran."""
    host, conn = _fresh_host(tmp_path)
    original_run = conn.run

    def run(command: str, **kwargs: object):  # type: ignore[no-untyped-def]
        if command.startswith(ops.APT_GET + " install"):
            for unit in UNITS:
                conn.set_fact(ServiceState(unit), ACTIVE)
        return original_run(command, **kwargs)

    conn.run = run  # type: ignore[method-assign]
    prometheus.apply(fake_context(host, settings))
    return host, conn


def test_drop_ins_are_written_before_the_packages_first_start(tmp_path: Path) -> None:
    host, conn = _apply_fresh(tmp_path, load_settings())
    commands = [command for result in host.changes for command in result.commands]
    install = commands.index(
        f"{ops.APT_GET} install --no-install-recommends prometheus prometheus-node-exporter"
    )
    dropin = next(
        i for i, c in enumerate(commands) if c.startswith(f"put {prometheus.dropin_path('prometheus')}")
    )
    assert dropin < install
    assert commands.index("systemctl daemon-reload") < install
    config = next(c for c in commands if c.startswith(f"put {prometheus.CONFIG_PATH}"))
    assert "validated by 'promtool check config {path}'" in config
    dropin_text = conn.files[prometheus.dropin_path("prometheus")].decode()
    assert "--web.listen-address=0.0.0.0:9095" in dropin_text
    assert "ExecStart=\n" in dropin_text  # clears the packaged ExecStart before replacing it
    assert (
        "--web.listen-address=0.0.0.0:9100"
        in conn.files[prometheus.dropin_path(prometheus.NODE_EXPORTER)].decode()
    )


def test_listeners_and_scrape_targets_follow_the_declared_ports(tmp_path: Path) -> None:
    moved = {"prometheus": 19095, "node-exporter": 19100}
    settings = load_settings(
        None,
        {
            "ports": [
                rule.model_copy(update={"port": moved[rule.name]}) if rule.name in moved else rule
                for rule in load_settings().ports
            ]
        },
    )
    _, conn = _apply_fresh(tmp_path, settings)
    files = {path: data.decode() for path, data in conn.files.items()}
    assert "--web.listen-address=0.0.0.0:19095" in files[prometheus.dropin_path(prometheus.PROMETHEUS)]
    assert "--web.listen-address=0.0.0.0:19100" in files[prometheus.dropin_path(prometheus.NODE_EXPORTER)]
    config = files[prometheus.CONFIG_PATH]
    assert 'targets: ["127.0.0.1:19095"]' in config and 'targets: ["127.0.0.1:19100"]' in config
    assert not re.search(r":(9095|9100)\b", "".join(files.values())), "a default port is still used"


def _converged(tmp_path: Path, settings: Settings, config: str) -> tuple[Host, FakeConnection]:
    dropins = {
        prometheus.dropin_path(prometheus.PROMETHEUS): prometheus.render_service_dropin(
            settings.charlie, prometheus_port=9095, admin_api=prometheus.admin_api_enabled(settings)
        ),
        prometheus.dropin_path(prometheus.NODE_EXPORTER): ops.render(
            prometheus.TEMPLATES / "node-exporter.service.conf.j2", {"listen": "0.0.0.0:9100"}
        ),
        prometheus.CONFIG_PATH: config,
    }
    conn = FakeConnection(files={path: text.encode() for path, text in dropins.items()})
    for path, text in dropins.items():
        conn.set_fact(FileInfo(path), f"regular file|root|root|644|{len(text)}\n")
    for unit in UNITS:
        conn.set_fact(FileInfo(f"/etc/systemd/system/{unit}.service.d"), "directory|root|root|755|4096\n")
        conn.set_fact(ServiceState(unit), ACTIVE)
    conn.set_fact(DebPackages(), "prometheus\t2.42\tii \nprometheus-node-exporter\t1.5\tii \n")
    conn.respond("hostname", (0, "hv-1\n", ""))
    return fake_host(conn, lock_dir=tmp_path), conn


def test_converged_host_changes_nothing(tmp_path: Path) -> None:
    settings = load_settings()
    host, _ = _converged(tmp_path, settings, _config(settings))
    assert prometheus.apply(fake_context(host, settings)).changed is False
    assert host.changes == []


def test_scrape_config_change_reloads_prometheus_without_restarting_anything(tmp_path: Path) -> None:
    settings = load_settings()
    host, _ = _converged(tmp_path, settings, "# an operator's hand edit\n")
    prometheus.apply(fake_context(host, settings))
    assert [result.op for result in host.changes] == [f"file {prometheus.CONFIG_PATH}", "service prometheus"]
    assert host.changes[1].commands == ["systemctl reload-or-restart -- prometheus"]


def test_grafana_without_a_pin_tells_the_operator_what_to_add() -> None:
    with pytest.raises(ValueError) as error:
        grafana.grafana_pin(load_settings())
    message = str(error.value)
    assert "artifacts.grafana is not set" in message
    assert "sha256" in message and "waive upstream-artifacts" in message
    assert not re.search(r"[0-9a-f]{64}", message), "the hint must not carry a checksum of its own"


def test_grafana_pin_must_name_a_deb_on_the_target() -> None:
    pin = ArtifactPin(version="11.0.0", url="https://example.invalid/g.tgz", sha256="a" * 64, dest="/opt/g")
    with pytest.raises(ValueError, match=r"artifacts.grafana.dest must be the path of the .deb"):
        grafana.grafana_pin(Settings(artifacts={"grafana": pin}))


def test_host_dashboard_queries_node_series_through_the_provisioned_datasource() -> None:
    board = grafana.dashboard("hvsuite-host", "hvsuite-prometheus")
    assert board["uid"] == "hvsuite-host"
    json.dumps(board)  # serializable as provisioned
    assert len(board["panels"]) >= 4
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "hvsuite-prometheus"}
        assert all("node_" in target["expr"] for target in panel["targets"])
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])


def test_grafana_datasource_points_at_prometheus_on_its_declared_port() -> None:
    text = ops.render(
        grafana.TEMPLATES / "grafana-datasource.yaml.j2", {"uid": "ds-1", "url": "http://127.0.0.1:9095"}
    )
    assert "uid: ds-1" in text and "url: http://127.0.0.1:9095" in text and "type: prometheus" in text


@pytest.mark.parametrize(
    ("content", "valid"),
    [
        (None, False),
        (b"", False),
        (b"admin", False),
        (b"x" * 40 + b"\nsecond line\n", False),
        (b"not a generated password at all, only spaces", False),
        (b"A1b2" * 10 + b"\n", True),
    ],
)
def test_grafana_admin_password_is_generated_again_when_missing_or_not_a_generated_one(
    tmp_path: Path, content: bytes | None, valid: bool
) -> None:
    path = tmp_path / "admin-password"
    if content is not None:
        path.write_bytes(content)
    generate, check = grafana.password_commands(str(path))
    assert (subprocess.run(["sh", "-c", check], check=False).returncode == 0) is valid
    subprocess.run(["sh", "-c", generate], check=True)
    assert subprocess.run(["sh", "-c", check], check=False).returncode == 0, path.read_bytes()
    assert path.read_bytes() != content
    if content is None:
        assert path.stat().st_mode & 0o777 == 0o600, "a new password file is created private"


class _RulesAndAlerts:
    """A later team's contributions, as a hooks module would make them."""

    @hookimpl
    def prometheus_rule_files(self, ctx: object) -> list[str]:
        return ["/etc/prometheus/rules/hvsuite-alerts.yml"]

    @hookimpl
    def prometheus_alertmanagers(self, ctx: object) -> list[dict]:
        return [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]


def test_later_teams_add_rule_files_and_alertmanagers_without_editing_charlie() -> None:
    settings = load_settings()
    ports = {"prometheus_port": 9095, "node_exporter_port": 9100, "hostname": "hv"}
    plain = prometheus.render_config(settings.charlie, **ports)
    assert "rule_files" not in plain and "alerting" not in plain
    conn = FakeConnection()
    conn.set_fact(FileInfo("/etc/prometheus/kubernetes/token"), "")
    ctx = fake_context(fake_host(conn), settings)
    contribution = _RulesAndAlerts()
    plugin_manager().register(contribution)
    try:
        contributed = prometheus.Contributions.collect(ctx)
    finally:
        plugin_manager().unregister(contribution)
    config = yaml.safe_load(prometheus.render_config(settings.charlie, contributed=contributed, **ports))
    assert config["rule_files"] == ["/etc/prometheus/rules/hvsuite-alerts.yml"]
    assert config["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]}
    assert [job["job_name"] for job in config["scrape_configs"]] == ["prometheus", "node"]


class _AdminApi:
    """A later team asking for Prometheus' admin API, as a hooks module would."""

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted

    @hookimpl
    def prometheus_admin_api(self, settings: object) -> bool:
        return self.wanted


def _exec_start(dropin: str) -> str:
    return next(line for line in dropin.splitlines() if line.startswith("ExecStart=/"))


def test_the_admin_api_is_off_unless_a_later_team_asks_for_it() -> None:
    charlie = load_settings().charlie
    off = prometheus.render_service_dropin(charlie, prometheus_port=9095, admin_api=False)
    on = prometheus.render_service_dropin(charlie, prometheus_port=9095, admin_api=True)
    assert "--web.enable-admin-api" not in _exec_start(off)
    assert _exec_start(on) == _exec_start(off) + " --web.enable-admin-api"


def test_a_later_team_turns_the_admin_api_on_through_its_hook() -> None:
    settings = load_settings()
    contribution = _AdminApi(True)
    plugin_manager().register(contribution)
    try:
        assert prometheus.admin_api_enabled(settings) is True
    finally:
        plugin_manager().unregister(contribution)


def test_refresh_flags_restarts_prometheus_only_when_its_drop_in_changed(tmp_path: Path) -> None:
    settings = load_settings()
    host, conn = _converged(tmp_path, settings, _config(settings))
    ctx = fake_context(host, settings)
    prometheus.refresh_flags(ctx)
    assert host.changes == []
    path = prometheus.dropin_path(prometheus.PROMETHEUS)
    stale = prometheus.render_service_dropin(settings.charlie, prometheus_port=9095, admin_api=False)
    wanted = conn.files[path].decode()
    if stale == wanted:  # no team asks for the admin API in this plan: drift the other way
        stale = prometheus.render_service_dropin(settings.charlie, prometheus_port=9095, admin_api=True)
    conn.files[path] = stale.encode()
    conn.set_fact(FileInfo(path), f"regular file|root|root|644|{len(stale)}\n")
    host, conn = fake_host(conn, lock_dir=tmp_path), conn
    prometheus.refresh_flags(fake_context(host, settings))
    commands = [command for result in host.changes for command in result.commands]
    assert any(command.startswith(f"put {path}") for command in commands)
    assert "systemctl daemon-reload" in commands
    assert f"systemctl restart -- {prometheus.PROMETHEUS}" in commands
    assert conn.files[path].decode() == wanted
