"""Team Golf-1's backup side as data: the settings it accepts, what it renders, the commands
its steps would run on the primary and the backup server, the order of its apply over the
hosts (with the password a secret of each host that sees it), its hook into Charlie's
Prometheus."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from apply import ops
from apply.api import Context
from apply.extensions import hooks
from apply.facts import AptListsAge, CommandSucceeds, DebPackages, FileInfo, ServiceState
from apply.runner import ApplyError, Host
from apply.testing import FakeConnection, fake_context, fake_host
from settings.loader import ConfigError, load_settings
from settings.model import Settings
from steps.charlie import prometheus
from steps.charlie.grafana import password_commands
from steps.golf1 import backup, backup_server, restic, restore
from steps.golf1.settings import (
    BackupServerSettings,
    Golf1Settings,
    RestoreSettings,
    RetentionSettings,
    covering,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC49V3U1mwues0GWEea2NTtNxQUtx258XCCME+3o+hbx"


def _settings(**golf1: object) -> Settings:
    return load_settings(None, {"golf1": golf1}) if golf1 else load_settings()


# -- settings --------------------------------------------------------------------------


def test_an_unmanaged_server_needs_its_host_keys_pinned() -> None:
    with pytest.raises(
        ValidationError, match=r"golf1\.backup_server\.host_keys is empty while .*managed is false"
    ):
        BackupServerSettings(managed=False)
    assert BackupServerSettings(managed=False, host_keys=[KEY]).host_keys == [KEY]


def test_a_host_key_that_is_no_public_key_is_refused_naming_the_field() -> None:
    with pytest.raises(
        ValidationError, match=r"golf1\.backup_server\.host_keys: 'AAAA' are not public host keys"
    ):
        BackupServerSettings(host_keys=["AAAA"])


def test_a_retention_that_keeps_nothing_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"golf1\.retention keeps nothing"):
        RetentionSettings(keep_daily=0, keep_weekly=0, keep_monthly=0)
    assert RetentionSettings(keep_weekly=0).arguments() == ["--keep-daily 7", "--keep-monthly 6"]


def test_relative_paths_are_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"golf1\.paths: 'etc' are not absolute paths"):
        Golf1Settings(paths=["etc"])
    with pytest.raises(ValidationError, match=r"golf1\.excludes: '/var/\.\./etc' are not absolute paths"):
        Golf1Settings(excludes=["/var/../etc"])
    with pytest.raises(ValidationError, match=r"golf1\.paths is empty"):
        Golf1Settings(paths=[])


def test_a_schedule_with_shell_or_unit_syntax_is_refused() -> None:
    for bad in ("daily\nExecStart=/bin/sh", "$(reboot)"):
        with pytest.raises(ValidationError, match=r"golf1\.schedule .* is no systemd calendar expression"):
            Golf1Settings(schedule=bad)


def test_the_drills_ports_must_differ() -> None:
    with pytest.raises(
        ValidationError, match=r"golf1\.restore: etcd_client_port, etcd_peer_port and prometheus"
    ):
        RestoreSettings(etcd_client_port=12379, etcd_peer_port=12379)


def test_overlapping_paths_are_backed_up_once() -> None:
    assert covering(["/etc/flintlock/certs", "/etc", "/etc/", "/var/lib/x", "/var/lib/xy"]) == [
        "/etc",
        "/var/lib/x",
        "/var/lib/xy",
    ]


def test_the_backup_covers_the_certificates_flintlock_and_the_snapshots() -> None:
    settings = _settings()
    paths = restic.backup_paths(settings)
    assert paths == ["/etc", settings.golf1.staging_dir, settings.base.state_dir]
    # Alpha's certificates and the cluster's PKI are inside /etc; moved elsewhere they are added.
    moved = load_settings(None, {"alpha": {"tls": {"cert_dir": "/srv/pki/flintlock"}}})
    assert "/srv/pki/flintlock" in restic.backup_paths(moved)


# -- rendered files --------------------------------------------------------------------


def _sh_n(text: str, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text(text)
    subprocess.run(["sh", "-n", str(script)], check=True)


def test_the_backup_script_snapshots_etcd_and_prometheus_then_backs_up_and_prunes(tmp_path: Path) -> None:
    settings = _settings()
    text = restic.render_backup_script(settings)
    _sh_n(text, tmp_path)
    lines = text.splitlines()
    etcd_save = next(i for i, line in enumerate(lines) if "snapshot save" in line)
    snapshot_api = next(i for i, line in enumerate(lines) if "/api/v1/admin/tsdb/snapshot" in line)
    backup = next(i for i, line in enumerate(lines) if " backup --tag hvsuite" in line)
    forget = next(i for i, line in enumerate(lines) if " forget --prune" in line)
    assert etcd_save < backup and snapshot_api < backup < forget
    assert "--endpoints=https://127.0.0.1:2379" in lines[etcd_save]  # the primary's own member
    assert "http://127.0.0.1:9095/api/v1/admin/tsdb/snapshot" in lines[snapshot_api]
    assert lines[forget].endswith("--keep-daily 7 --keep-weekly 4 --keep-monthly 6")


def test_without_snapshots_the_script_only_backs_up_files(tmp_path: Path) -> None:
    text = restic.render_backup_script(
        _settings(etcd_snapshot=False, prometheus_snapshot=False, excludes=["/etc/ssl/private/x"])
    )
    _sh_n(text, tmp_path)
    assert "etcdctl" not in text and "curl" not in text
    assert "backup --tag hvsuite --exclude /etc/ssl/private/x" in text


def test_the_wrapper_and_ssh_config_pin_the_server_and_the_key(tmp_path: Path) -> None:
    settings = _settings(backup_server={"port": 23, "user": "u123", "managed": False, "host_keys": [KEY]})
    wrapper = restic.render_wrapper(settings)
    _sh_n(wrapper, tmp_path)
    assert 'RESTIC_REPOSITORY="sftp:hvsuite-backup-repository:hvsuite/restic"' in wrapper
    assert 'RESTIC_PASSWORD_FILE="/etc/hvsuite-backup/repository-password"' in wrapper
    assert (
        '-o sftp.command="ssh -F /etc/hvsuite-backup/ssh_config hvsuite-backup-repository -s sftp"' in wrapper
    )
    config = restic.render_ssh_config(settings, "203.0.113.5")
    for line in (
        "HostName 203.0.113.5",
        "Port 23",
        "User u123",
        "IdentitiesOnly yes",
        "StrictHostKeyChecking yes",
        "BatchMode yes",
    ):
        assert f"    {line}\n" in config
    assert restic.known_hosts_line("203.0.113.5", 23, KEY) == f"[203.0.113.5]:23 {KEY}"
    assert restic.known_hosts_line("203.0.113.5", 22, KEY) == f"203.0.113.5 {KEY}"


def test_the_timer_runs_the_service_on_the_schedule() -> None:
    settings = _settings(schedule="Mon *-*-* 01:00:00")
    timer = restic.render_timer(settings)
    assert "OnCalendar=Mon *-*-* 01:00:00\n" in timer
    assert "Unit=hvsuite-backup.service\n" in timer and "Persistent=true\n" in timer
    if shutil.which("systemd-analyze"):
        subprocess.run(
            ["systemd-analyze", "calendar", settings.golf1.schedule], check=True, capture_output=True
        )
    service = restic.render_service(settings)
    assert "Type=oneshot\n" in service and f"ExecStart={restic.BACKUP_SCRIPT}\n" in service


def test_the_backup_user_may_use_sftp_only() -> None:
    dropin = backup_server.render_sshd_dropin("hvsuite-backup")
    assert "Match User hvsuite-backup\n" in dropin
    assert "    ForceCommand internal-sftp\n" in dropin and "    AllowTcpForwarding no\n" in dropin
    keys = backup_server.render_authorized_keys([KEY + "\n", KEY, "ssh-ed25519 AAAAB restore"])
    assert keys == f"restrict ssh-ed25519 AAAAB restore\nrestrict {KEY}\n"  # sorted, each once


# -- the hook into Charlie's Prometheus ------------------------------------------------


def test_golf1_asks_charlie_for_the_admin_api_only_for_prometheus_snapshots() -> None:
    assert True in hooks().prometheus_admin_api(settings=_settings())
    assert prometheus.admin_api_enabled(_settings()) is True
    assert prometheus.admin_api_enabled(_settings(prometheus_snapshot=False)) is False


# -- steps -----------------------------------------------------------------------------


def _fresh_primary(tmp_path: Path, settings: Settings, *, mode: str = "apply") -> tuple[Host, FakeConnection]:
    conn = FakeConnection()
    conn.set_fact(DebPackages(), "")
    conn.set_fact(AptListsAge(), "now=1000\nnewest=900\n")
    path = restic.files(settings).password
    for shell in (
        password_commands(path)[1],
        f'test "$(stat -c %U:%G:%a {path})" = root:root:600',
        f"{restic.WRAPPER} cat config >/dev/null 2>&1",
        restic.repository_exists_command(settings),
    ):
        conn.set_fact(CommandSucceeds(shell), "no\n")
    return fake_host(conn, lock_dir=tmp_path, mode=mode), conn  # type: ignore[arg-type]


def test_a_fresh_primary_gets_restic_a_key_a_root_only_password_and_a_repository(tmp_path: Path) -> None:
    settings = _settings()
    host, _ = _fresh_primary(tmp_path, settings)
    ctx = fake_context(host, settings)
    assert restic.client(ctx).changed and restic.password(ctx).changed
    restic.repository(ctx)
    commands = [command for result in host.changes for command in result.commands]
    assert f"{ops.APT_GET} install --no-install-recommends curl etcd-client restic" in commands
    assert any(
        c.startswith("ssh-keygen -q -t ed25519 -N '' ") and c.endswith("/etc/hvsuite-backup/id_ed25519")
        for c in commands
    )
    assert "mkdir -p -- /etc/hvsuite-backup" in commands and "chmod 0700 -- /etc/hvsuite-backup" in commands
    assert any(c.startswith("umask 077 && head -c 32 /dev/urandom") for c in commands)
    assert f"{restic.WRAPPER} init" in commands


def test_a_built_primary_changes_nothing(tmp_path: Path) -> None:
    settings = _settings()
    golf1, paths = settings.golf1, restic.files(settings)
    conn = FakeConnection(default=(0, "yes\n", ""))
    conn.set_fact(DebPackages(), "".join(f"{name}\t1\tii \n" for name in golf1.packages))
    conn.set_fact(AptListsAge(), "now=1000\nnewest=900\n")
    for directory in (golf1.config_dir, golf1.cache_dir):
        conn.set_fact(FileInfo(directory), "directory|root|root|700|4096\n")
    conn.set_fact(FileInfo(paths.key), "regular file|root|root|600|411\n")
    host = fake_host(conn, lock_dir=tmp_path)
    ctx = fake_context(host, settings)
    restic.client(ctx)
    restic.password(ctx)
    restic.repository(ctx)
    assert host.changes == []


def test_check_mode_records_what_would_change_and_runs_nothing(tmp_path: Path) -> None:
    settings = _settings()
    host, conn = _fresh_primary(tmp_path, settings, mode="check")
    ctx = fake_context(host, settings)
    restic.client(ctx)
    restic.password(ctx)
    restic.repository(ctx)
    assert host.changes
    assert conn.uploads == []
    assert not any(
        c.startswith(("ssh-keygen", "umask 077", f"{restic.WRAPPER} init", ops.APT_GET))
        for c in conn.commands
    )


def test_the_backup_server_is_prepared_like_a_storage_box(tmp_path: Path) -> None:
    settings = _settings()
    conn = FakeConnection()
    conn.set_fact(CommandSucceeds("id -u hvsuite-backup"), "no\n")
    conn.set_fact(
        ServiceState("ssh"),
        "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\n",
    )
    host = fake_host(conn, lock_dir=tmp_path)
    backup_server.prepare(fake_context(host, settings), [KEY])
    commands = [command for result in host.changes for command in result.commands]
    assert (
        "useradd --create-home --home-dir /home/hvsuite-backup --shell /usr/sbin/nologin hvsuite-backup"
        in commands
    )
    assert conn.files["/home/hvsuite-backup/.ssh/authorized_keys"].decode() == f"restrict {KEY}\n"
    assert "ForceCommand internal-sftp" in conn.files[backup_server.SSHD_DROPIN].decode()
    put = next(c for c in commands if c.startswith(f"put {backup_server.SSHD_DROPIN}"))
    assert "sshd -t -f {path}" in put
    assert "systemctl reload-or-restart -- ssh" in commands
    assert "mkdir -p -- /home/hvsuite-backup/hvsuite" in commands  # the repository's parent


def test_a_repository_that_does_not_open_is_never_initialised_over(tmp_path: Path) -> None:
    settings = _settings()
    host, conn = _fresh_primary(tmp_path, settings)
    conn.set_fact(CommandSucceeds(restic.repository_exists_command(settings)), "yes\n")
    with pytest.raises(
        ApplyError, match=r"exists but does not open with the password in /etc/hvsuite-backup/"
    ):
        restic.repository(fake_context(host, settings))
    assert f"{restic.WRAPPER} init" not in conn.commands
    assert "printf 'ls hvsuite/restic/config\\n' | sftp -q -b - -F" in restic.repository_exists_command(
        settings
    )


def test_an_sftp_only_servers_user_and_port_must_agree_with_the_inventory() -> None:
    hosts = [host.model_dump() for host in load_settings().hosts]
    for host in hosts:
        if "backup" in host["roles"]:
            host["ssh"] = "ssh://u123456@u123456.your-storagebox.de:23"
            host["login"] = False
    unmanaged = {"managed": False, "host_keys": [KEY]}
    with pytest.raises(ConfigError, match=r'set golf1\.backup_server\.user = "u123456".*port = 23'):
        load_settings(None, {"hosts": hosts, "golf1": {"backup_server": unmanaged}})
    agreeing = {**unmanaged, "user": "u123456", "port": 23}
    assert (
        load_settings(None, {"hosts": hosts, "golf1": {"backup_server": agreeing}}).golf1.backup_server.port
        == 23
    )


def test_etcdctl_reaches_the_primarys_own_member_with_deltas_client_certificate() -> None:
    command = restic.etcdctl("put /k v")
    assert command.startswith("ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=")
    assert command.endswith(" put /k v")
    assert restic.etcd_snapshot_command("/var/backups/x y.part") == restic.etcdctl(
        "snapshot save '/var/backups/x y.part'"
    )


# -- the apply over the hosts (steps.golf1.backup) -------------------------------------------

SECRET = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0"
PRIMARY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPrimary hvsuite-backup@hv-1"
RESTORE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRestore hvsuite-restore@restore"


def _fleet(settings: Settings, *, password: str | None = SECRET) -> tuple[Context, Context, Context]:
    paths = restic.files(settings)
    primary_files = {paths.public_key: f"{PRIMARY_KEY}\n".encode()}
    if password is not None:
        primary_files[paths.password] = f"{password}\n".encode()
    hosts = (
        fake_host(FakeConnection(files=primary_files), name="primary"),
        fake_host(FakeConnection(files={paths.public_key: f"{RESTORE_KEY}\n".encode()}), name="restore"),
        fake_host(FakeConnection(), name="backup"),
    )
    peers = {"backup": ("203.0.113.20",)}
    primary, restore_host, backup_host = (replace(fake_context(h, settings), peers=peers) for h in hosts)
    return primary, restore_host, backup_host


def _record(monkeypatch: pytest.MonkeyPatch, calls: list[tuple[str, str, object]]) -> None:
    """Each component step replaced by a recorder of (host, what, arguments); the restore
    host's credentials also record whether the password was a secret there already."""

    def recorder(what: str):
        def record(ctx: Context, *args: object) -> None:
            if what == "restore.credentials":
                args = (*args, SECRET not in ctx.host.redactor.redact(SECRET))
            calls.append((ctx.host.name, what, args))

        return record

    for module, name in (
        (restic, "client"),
        (restic, "password"),
        (restic, "access"),
        (restic, "repository"),
        (restic, "schedule"),
        (restore, "prepare"),
        (restore, "credentials"),
        (backup_server, "prepare"),
    ):
        monkeypatch.setattr(module, name, recorder(f"{module.__name__.rsplit('.', 1)[1]}.{name}"))
    monkeypatch.setattr(backup_server, "host_keys", lambda host: [KEY] if host.name == "backup" else [])


def test_the_apply_orders_the_hosts_and_keeps_the_password_a_secret_on_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings()
    calls: list[tuple[str, str, object]] = []
    _record(monkeypatch, calls)
    primary, restore_host, backup_host = _fleet(settings)
    access = backup.apply(primary, restore_host, backup_host)
    assert access == backup.Access(
        "203.0.113.20",
        {"primary": " ".join(PRIMARY_KEY.split()[:2]), "restore": " ".join(RESTORE_KEY.split()[:2])},
    )
    assert [(host, what) for host, what, _ in calls] == [
        ("primary", "restic.client"),
        ("primary", "restic.password"),
        ("restore", "restore.prepare"),
        ("backup", "backup_server.prepare"),
        ("primary", "restic.access"),
        ("restore", "restore.credentials"),
        ("primary", "restic.repository"),
        ("primary", "restic.schedule"),
    ]
    arguments = {what: args for _, what, args in calls}
    assert arguments["backup_server.prepare"] == (list(access.public_keys.values()),)
    assert arguments["restic.access"] == ("203.0.113.20", [KEY])  # the managed server's own key
    # The primary's file as it is, and a secret of the restore host before it arrives there.
    assert arguments["restore.credentials"] == (f"{SECRET}\n", "203.0.113.20", [KEY], True)
    for ctx in (primary, restore_host):
        assert SECRET not in ctx.host.redactor.redact(f"password {SECRET}")


def test_each_part_is_a_step_of_its_own_title(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings()
    _record(monkeypatch, [])
    titles: list[tuple[str, str]] = []
    primary, restore_host, backup_host = _fleet(settings)
    for ctx in (primary, restore_host, backup_host):
        step = ctx.host.step

        def recorded(title: str, step=step, name=ctx.host.name):
            titles.append((name, title))
            return step(title)

        monkeypatch.setattr(ctx.host, "step", recorded)
    backup.apply(primary, restore_host, backup_host)
    assert titles == [
        ("restore", "restore host: restic, etcd, Prometheus and its SSH key"),
        ("backup", "backup server prepared like a Storage Box"),
        ("primary", "primary: access to the repository"),
        ("restore", "restore host: password and access to the repository"),
        ("primary", "restic repository"),
    ]


def test_an_unmanaged_server_is_reached_with_its_pinned_keys_and_never_logged_into(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(backup_server={"managed": False, "host_keys": [KEY]})
    calls: list[tuple[str, str, object]] = []
    _record(monkeypatch, calls)
    primary, restore_host, _ = _fleet(settings)
    backup.apply(primary, restore_host, None)
    assert "backup" not in {host for host, _, _ in calls}
    assert ("primary", "restic.access", ("203.0.113.20", [KEY])) in calls


def test_a_managed_server_needs_its_context_and_a_missing_password_stops_the_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings()
    calls: list[tuple[str, str, object]] = []
    _record(monkeypatch, calls)
    primary, restore_host, _ = _fleet(settings)
    with pytest.raises(ApplyError, match=r"managed is true: pass the backup host's context"):
        backup.apply(primary, restore_host, None)
    primary, restore_host, backup_host = _fleet(settings, password=None)
    with pytest.raises(ApplyError, match=r"repository-password is missing after the password step"):
        backup.apply(primary, restore_host, backup_host)
    assert not any(what == "restore.credentials" for _, what, _ in calls)
