"""Team Golf-1 (phase 5): backup and disaster recovery.

Apply restic (Debian) on the primary with a repository on the backup host over SFTP (a
Storage Box in production; on a managed server an SFTP-only user prepared like one), its
password generated root-only on the primary, a backup service (an etcd snapshot of the
primary's own member, a Prometheus TSDB snapshot through Charlie's admin API, /etc with
Alpha's and the cluster's certificates, flintlock's state, then `restic forget --prune` with
the retention policy) and its systemd timer; restic and the serving tools on the restore host.

Then prove it: run the backup service (twice, so retention has something to forget), check the
repository's integrity, restore the snapshot onto the restore host and compare every file's
sha256 with the primary's, restore the etcd snapshot into a throwaway etcd that answers a key
written before the backup, and serve the Prometheus snapshot from a throwaway Prometheus that
returns the primary's samples from before the backup. The DR runbook is rendered from what is
configured and goes to the reports directory and the Allure report.
"""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import Iterator
from pathlib import Path

import allure
import pytest

from apply.api import Context
from apply.runner import Host
from checks import backup as backup_checks
from checks.backup import BackupRun, Drill
from engine import apply_fixture, not_applicable
from settings.model import Settings
from steps.delta import etcd
from steps.golf1 import backup, restic, restore, runbook

pytestmark = [pytest.mark.usefixtures("applied"), pytest.mark.smoke]


@pytest.fixture(scope="module")
def restore_host(fleet):  # targets.plugin.Member
    return fleet.one("restore")


@apply_fixture
def applied(ctx: Context, fleet, restore_host, settings: Settings) -> backup.Access:
    managed = settings.golf1.backup_server.managed
    backup_host = fleet.context(fleet.one("backup")) if managed else None
    return backup.apply(ctx, fleet.context(restore_host), backup_host)


@pytest.fixture(scope="module")
def backup_run(applied: backup.Access, remote: Host, target, settings: Settings) -> Iterator[BackupRun]:
    with backup_checks.backup_runs(remote, target.address, settings) as run:
        yield run


@pytest.fixture(scope="module")
def drill(applied: backup.Access, restore_host, backup_run: BackupRun, settings: Settings) -> Drill:
    return backup_checks.restore_drill(restore_host.remote, settings, backup_run)


@pytest.fixture(scope="module")
def runbook_text(
    reports_dir: Path,
    applied: backup.Access,
    restore_host,
    remote: Host,
    target,
    settings: Settings,
    drill: Drill,
    backup_run: BackupRun,
) -> str:
    facts = backup_checks.runbook_facts(
        remote, settings, applied, backup_run, drill, target.address, restore_host.target.address
    )
    text = runbook.render(settings, facts)
    (reports_dir / runbook.FILE_NAME).write_text(text)
    allure.attach(text, name="DR runbook", attachment_type=allure.attachment_type.TEXT, extension="md")
    return text


# -- Backup system ---------------------------------------------------------------------


@pytest.mark.task("Backup system")
def test_the_repository_password_is_root_only_and_never_logged(
    remote: Host, settings: Settings, host
) -> None:
    path = restic.files(settings).password
    assert host.check_output(f"stat -c %U:%G:%a {shlex.quote(path)}") == "root:root:600"
    secret = (backup.read_text(remote, path) or "").strip()
    assert len(secret) >= 32
    # The runner's redactor knows it: no command output or report shows it.
    assert secret not in remote.redactor.redact(f"password {secret}")


@pytest.mark.task("Backup system")
def test_the_backup_timer_is_scheduled(host, settings: Settings) -> None:
    unit = f"{settings.golf1.unit}.timer"
    state = host.check_output(f"systemctl show -p ActiveState,UnitFileState,NextElapseUSecRealtime {unit}")
    values = dict(line.split("=", 1) for line in state.splitlines())
    assert values["ActiveState"] == "active" and values["UnitFileState"] == "enabled", state
    assert values["NextElapseUSecRealtime"], f"{unit} has no next run: {state}"
    listed = host.check_output(f"systemctl list-timers --all --no-legend {unit}")
    assert f"{settings.golf1.unit}.service" in listed, listed


@pytest.mark.task("Backup system")
def test_the_repository_is_reachable_from_the_primary_over_sftp(remote: Host) -> None:
    result = remote.run(f"{restic.WRAPPER} cat config", check=False)
    assert result.ok, result.stderr
    assert json.loads(result.stdout)["version"] >= 1


@pytest.mark.task("Backup system")
def test_the_backup_user_gets_sftp_and_no_shell(remote: Host, settings: Settings) -> None:
    if not settings.golf1.backup_server.managed:
        not_applicable(
            "golf1.backup_server.managed is false: the provider's SFTP-only server is not the suite's"
        )
    marker = secrets.token_hex(8)
    shell = backup_checks.as_backup_user(remote, settings, f"echo {marker}")
    assert marker not in shell.stdout, "the backup user ran a shell command"
    listing = backup_checks.sftp_as_backup_user(remote, settings, "ls")
    assert listing.ok, listing.stderr


@pytest.mark.task("Backup system")
@pytest.mark.full
def test_the_backup_service_makes_a_snapshot_of_what_is_configured(
    backup_run: BackupRun, settings: Settings, host
) -> None:
    first, latest = backup_run.taken
    assert first["id"] != latest["id"], "the second run made no snapshot of its own"
    present = [path for path in restic.backup_paths(settings) if host.file(path).exists]
    assert sorted(latest["paths"]) == sorted(present)
    assert settings.golf1.staging_dir in latest["paths"]


@pytest.mark.task("Backup system")
@pytest.mark.full
def test_retention_is_applied_after_each_backup(
    backup_run: BackupRun, remote: Host, settings: Settings
) -> None:
    would_remove = backup_checks.would_forget(remote, settings)
    assert would_remove == [], f"the policy was not applied: it would still remove {would_remove}"
    first, latest = backup_run.taken
    assert latest["id"] in backup_run.kept
    # Both runs fall in one daily bucket (unless midnight fell between them): the policy
    # keeps one snapshot per bucket, so forget --prune removed the first.
    if settings.golf1.retention.keep_daily and first["time"][:10] == latest["time"][:10]:
        assert first["id"] not in backup_run.kept, "the first run's snapshot was not forgotten"


@pytest.mark.task("Backup system")
@pytest.mark.full
def test_the_repository_passes_restic_check(backup_run: BackupRun, remote: Host, settings: Settings) -> None:
    result = remote.run(restic.check_command(settings), check=False, timeout=1800)
    assert result.ok, result.stdout + result.stderr
    assert "no errors were found" in result.stdout


# -- Restore testing -------------------------------------------------------------------


@pytest.mark.task("Restore testing")
@pytest.mark.full
def test_every_restored_file_is_byte_identical_to_the_primarys(drill: Drill, settings: Settings) -> None:
    comparison = drill.comparison
    assert not comparison.problems, "\n".join(comparison.problems[:50])
    compared = set(comparison.compared)
    for directory in (settings.alpha.tls.cert_dir, etcd.PKI, settings.golf1.staging_dir):
        assert any(path.startswith(directory.lstrip("/") + "/") for path in compared), (
            f"nothing of {directory}"
        )
    assert len(compared) > 100, f"only {len(compared)} files compared"


@pytest.mark.task("Restore testing")
@pytest.mark.full
def test_the_restored_etcd_answers_a_key_written_before_the_backup(
    drill: Drill, backup_run: BackupRun, settings: Settings
) -> None:
    if not settings.golf1.etcd_snapshot:
        not_applicable("golf1.etcd_snapshot is off: no etcd snapshot is backed up")
    assert not drill.etcd_errors, drill.etcd_errors
    assert drill.etcd_value == backup_run.nonce
    assert "/registry/namespaces/kube-system" in drill.etcd_cluster_keys, drill.etcd_cluster_keys


@pytest.mark.task("Restore testing")
@pytest.mark.full
def test_the_restored_prometheus_serves_the_samples_from_before_the_backup(
    drill: Drill, backup_run: BackupRun, settings: Settings
) -> None:
    if not settings.golf1.prometheus_snapshot:
        not_applicable("golf1.prometheus_snapshot is off: no Prometheus snapshot is backed up")
    assert not drill.prometheus_errors, drill.prometheus_errors
    assert backup_run.prometheus_window, "the primary's Prometheus had no samples before the backup"
    assert drill.prometheus_window == backup_run.prometheus_window


@pytest.mark.task("Restore testing")
@pytest.mark.requires("upstream-artifacts")
@pytest.mark.requires("devmapper")
@pytest.mark.full
def test_flintlocks_state_is_restored(drill: Drill, settings: Settings) -> None:
    state = settings.base.state_dir.lstrip("/") + "/"
    restored = [path for path in drill.comparison.compared if path.startswith(state)]
    assert restored, f"nothing of {settings.base.state_dir} was restored byte for byte"


@pytest.mark.task("Restore testing")
@pytest.mark.full
def test_the_throwaway_servers_and_restored_trees_are_gone(drill: Drill) -> None:
    assert set(drill.units_left.values()) == {"not-found"}, drill.units_left
    assert not drill.trees_left


# -- DR procedures ---------------------------------------------------------------------


@pytest.mark.task("DR procedures")
@pytest.mark.full
def test_the_runbook_names_what_is_configured_and_the_proven_restore(
    runbook_text: str,
    applied: backup.Access,
    restore_host,
    settings: Settings,
    reports_dir: Path,
) -> None:
    golf1 = settings.golf1
    plan = restore.Drill(settings)
    for expected in (
        restic.repository_url(settings),
        applied.backup_address,
        f"OnCalendar={golf1.schedule}",
        plan.etcd_restore(),
        plan.prometheus_serve(),
        *restic.backup_paths(settings),
        *applied.public_keys.values(),
    ):
        assert expected in runbook_text, f"the runbook lacks {expected!r}"
    assert "not scheduled" not in runbook_text
    password = (backup.read_text(restore_host.remote, restic.files(settings).password) or "").strip()
    assert password and password not in runbook_text
    assert (reports_dir / runbook.FILE_NAME).read_text() == runbook_text
