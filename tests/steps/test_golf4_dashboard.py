"""Team Golf-4's settings and its dashboard step as data: what it accepts, what it renders and
the commands it would run, no SSH."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import pytest
from pydantic import ValidationError

from apply import ops
from apply.facts import AptListsAge, CommandSucceeds, DebPackages, FileInfo, ServiceState
from apply.runner import Host
from apply.testing import FakeConnection, fake_context, fake_host
from settings.loader import ConfigError, load_settings
from steps.alpha import firewall
from steps.golf4 import dashboard
from steps.golf4.app.config import ConfigError as AppConfigError
from steps.golf4.app.config import DashboardConfig
from steps.golf4.settings import Golf4Settings

SETTINGS = load_settings()
GOLF4 = SETTINGS.golf4
UNIT = GOLF4.unit
ACTIVE = "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\n"
NOT_FOUND = "LoadState=not-found\nActiveState=inactive\nUnitFileState=\nNeedDaemonReload=no\n"
USER_EXISTS = CommandSucceeds(f"getent passwd {GOLF4.user}")
PACKAGE_DIR = posixpath.join(GOLF4.app_dir, dashboard.PACKAGE)


# -- settings ---------------------------------------------------------------------------------


def test_a_listen_address_that_is_no_ip_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"golf4\.listen_address 'everywhere' is not an IP address"):
        Golf4Settings(listen_address="everywhere")


def test_settings_and_data_inside_the_code_directory_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"golf4: config_file, data_dir lie inside golf4\.app_dir"):
        Golf4Settings(config_file="/opt/hvsuite/dashboard/x.json", data_dir="/opt/hvsuite/dashboard/data")


def test_a_package_name_that_is_not_debians_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"golf4\.packages: 'FastAPI' are not Debian package names"):
        Golf4Settings(packages=["FastAPI"])


def test_a_dashboard_open_to_the_world_is_refused_by_the_loader(tmp_path: Path) -> None:
    config = tmp_path / "suite.toml"
    text = (Path(__file__).resolve().parents[2] / "settings" / "scratch.toml").read_text()
    old = 'name = "hvsuite-dashboard"\nteam = "Golf-4"\nport = 8480\nsources = ["admin"]'
    assert old in text
    config.write_text(text.replace(old, old.replace('["admin"]', '["world"]')))
    with pytest.raises(
        ConfigError, match=r'the rule "hvsuite-dashboard" \(golf4\.port_name\) is open to "world"'
    ):
        load_settings(config)


def test_the_port_is_the_declared_rule_and_reachable_from_admin_sources_only() -> None:
    port = SETTINGS.port("Golf-4", GOLF4.port_name)
    assert json.loads(dashboard.render_config(SETTINGS))["port"] == port
    assert port in firewall.allowed_ports(SETTINGS, ["10.231.0.0/24"], "10.231.0.7")
    assert port not in firewall.allowed_ports(SETTINGS, ["10.231.0.0/24"], "198.51.100.7")


def test_a_missing_port_rule_names_the_fix() -> None:
    bare = SETTINGS.model_copy(update={"ports": [rule for rule in SETTINGS.ports if rule.team != "Golf-4"]})
    with pytest.raises(ValueError, match=r"no rule named 'hvsuite-dashboard' for team Golf-4; declare it"):
        dashboard.render_config(bare)


# -- what it renders ----------------------------------------------------------------------------


def test_the_service_settings_pass_the_applications_own_validation() -> None:
    config = DashboardConfig.from_dict(json.loads(dashboard.render_config(SETTINGS)))
    assert config.prometheus_url == f"http://127.0.0.1:{SETTINGS.port('Charlie', 'prometheus')}"
    assert config.flintlock_state_dir == SETTINGS.base.state_dir
    assert config.data_dir == GOLF4.data_dir


def test_the_application_refuses_settings_it_cannot_serve() -> None:
    raw = json.loads(dashboard.render_config(SETTINGS))
    with pytest.raises(AppConfigError, match="port 0 is not a TCP port"):
        DashboardConfig.from_dict({**raw, "port": 0})
    with pytest.raises(AppConfigError, match="unknown key 'extra'"):
        DashboardConfig.from_dict({**raw, "extra": 1})


def test_the_unit_runs_the_package_as_its_own_user_read_only() -> None:
    unit = dashboard.render_unit(SETTINGS)
    assert f"ExecStart=/usr/bin/python3 -m hvsuite_dashboard --config {GOLF4.config_file}\n" in unit
    assert f"User={GOLF4.user}\n" in unit and "ProtectSystem=strict\n" in unit
    assert "CapabilityBoundingSet=CAP_DAC_READ_SEARCH\n" in unit
    assert f"PYTHONPATH={GOLF4.app_dir}" in unit


def test_the_application_is_its_code_and_templates_and_the_command_an_entry_point() -> None:
    files = dashboard.app_files()
    assert {"__init__.py", "__main__.py", "api.py", "reports.py", "templates/dashboard.html.j2"} <= set(files)
    assert not any("__pycache__" in name for name in files)
    entry = dashboard.render_cli(SETTINGS)
    assert entry.startswith("#!/usr/bin/python3\n")
    assert f'sys.path.insert(0, "{GOLF4.app_dir}")' in entry
    assert f'main(["--config", "{GOLF4.config_file}", *sys.argv[1:]])' in entry
    compile(entry, GOLF4.cli_path, "exec")


# -- the step ------------------------------------------------------------------------------------


def _fresh(tmp_path: Path, mode: str = "apply") -> tuple[Host, FakeConnection]:
    conn = FakeConnection()
    conn.set_fact(DebPackages(), "")
    conn.set_fact(AptListsAge(), "now=1000\nnewest=900\n")
    conn.set_fact(USER_EXISTS, "no\n")
    conn.set_fact(ServiceState(UNIT), NOT_FOUND)
    original = conn.run

    def run(command: str, **kwargs: object):  # type: ignore[no-untyped-def]
        # systemd knows the unit once its file was written and reloaded.
        if command == "systemctl daemon-reload":
            conn.set_fact(ServiceState(UNIT), ACTIVE.replace("=active", "=inactive").replace("=enabled", "="))
        return original(command, **kwargs)

    conn.run = run  # type: ignore[method-assign]
    return fake_host(conn, lock_dir=tmp_path, mode=mode), conn  # type: ignore[arg-type]


def _converged(tmp_path: Path) -> tuple[Host, FakeConnection]:
    files = {posixpath.join(PACKAGE_DIR, name): data for name, data in dashboard.app_files().items()}
    files[GOLF4.config_file] = dashboard.render_config(SETTINGS).encode()
    files[GOLF4.cli_path] = dashboard.render_cli(SETTINGS).encode()
    files[dashboard.unit_path(SETTINGS)] = dashboard.render_unit(SETTINGS).encode()
    conn = FakeConnection(files=files)
    for path, data in files.items():
        mode = "755" if path == GOLF4.cli_path else "644"
        conn.set_fact(FileInfo(path), f"regular file|root|root|{mode}|{len(data)}\n")
    directories = {posixpath.dirname(path) for path in files} | {GOLF4.data_dir}
    for path in directories:
        conn.set_fact(FileInfo(path), "directory|root|root|755|4096\n")
    conn.set_fact(DebPackages(), "".join(f"{name}\t1.0\tii \n" for name in GOLF4.packages))
    conn.set_fact(USER_EXISTS, "yes\n")
    conn.set_fact(ServiceState(UNIT), ACTIVE)
    return fake_host(conn, lock_dir=tmp_path), conn


def test_a_fresh_host_gets_the_stack_the_user_the_code_and_a_started_service(tmp_path: Path) -> None:
    host, conn = _fresh(tmp_path)
    applied = dashboard.apply(fake_context(host, SETTINGS, profile="scratch"))
    assert applied.changed
    commands = [command for result in host.changes for command in result.commands]
    install = f"{ops.APT_GET} install --no-install-recommends python3-fastapi python3-jinja2 python3-uvicorn"
    assert install in commands
    assert commands.index(install) < commands.index(dashboard.user_command(GOLF4.user))
    config = next(c for c in commands if c.startswith(f"put {GOLF4.config_file}"))
    assert "--check-config {path}" in config  # validated by the application before the swap
    assert conn.files[posixpath.join(PACKAGE_DIR, "api.py")] == dashboard.app_files()["api.py"]
    assert conn.files[GOLF4.cli_path] == dashboard.render_cli(SETTINGS).encode()
    assert f"chmod 0755 -- {GOLF4.cli_path}" not in commands  # written with its mode at once
    assert commands[-2:] == [f"systemctl enable -- {UNIT}", f"systemctl start -- {UNIT}"]


def test_a_converged_host_changes_nothing(tmp_path: Path) -> None:
    host, _ = _converged(tmp_path)
    assert dashboard.apply(fake_context(host, SETTINGS, profile="scratch")).changed is False
    assert host.changes == []


def test_changed_code_restarts_the_service_and_nothing_else_changes(tmp_path: Path) -> None:
    host, conn = _converged(tmp_path)
    stale = posixpath.join(PACKAGE_DIR, "reports.py")
    conn.files[stale] = b"# an older version\n"
    conn.set_fact(FileInfo(stale), "regular file|root|root|644|20\n")
    dashboard.apply(fake_context(host, SETTINGS, profile="scratch"))
    assert [result.op for result in host.changes] == [f"file {stale}", f"service {UNIT}"]
    assert host.changes[-1].commands == [f"systemctl restart -- {UNIT}"]


def test_check_mode_records_what_would_change_and_writes_nothing(tmp_path: Path) -> None:
    host, conn = _fresh(tmp_path, mode="check")
    assert dashboard.apply(fake_context(host, SETTINGS, profile="scratch")).changed
    assert conn.uploads == []
    assert not any(c.startswith(("useradd", "systemctl start", ops.APT_GET)) for c in conn.commands)
