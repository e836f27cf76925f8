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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import allure
import pytest
import requests

from apply.api import Context, step
from apply.poll import eventually
from apply.runner import ApplyError, Host
from checks import backup as backup_checks
from engine import apply_fixture, not_applicable
from settings.model import Settings
from steps.delta import etcd
from steps.golf1 import backup_server, restic, restore, runbook

pytestmark = pytest.mark.usefixtures("applied")

SERVE_TIMEOUT = 90.0
# The window of samples compared between the primary's Prometheus and the restored one.
SAMPLE_WINDOW = "2m"
PROBE_SERIES = 'node_load1{job="node"}'


@dataclass
class Hosts:
    backup_address: str
    restore: Any  # targets.plugin.Member
    public_keys: dict[str, str] = field(default_factory=dict)


def _read_text(host: Host, path: str) -> str | None:
    data = host.read(path)
    return data.decode() if data is not None else None


@apply_fixture
def applied(ctx: Context, fleet, remote: Host, settings: Settings) -> Hosts:
    golf1 = settings.golf1
    paths = restic.files(settings)
    restore_member = fleet.one("restore")
    restore_ctx = fleet.context(restore_member)
    # The backup host's address only: an SFTP-only server is never logged into as a host.
    hosts = Hosts(ctx.peers["backup"][0], restore_member)

    restic.client(ctx)
    restic.password(ctx)
    step("restore host: restic, etcd, Prometheus and its SSH key")(restore.prepare)(restore_ctx)
    password = _read_text(remote, paths.password)
    if password is None and ctx.mode == "apply":
        raise ApplyError(f"[{remote.name}] {paths.password} is missing after the password step")
    password = password or ""
    if password.strip():
        for member in (remote, restore_member.remote):
            member.redactor.add(password.strip())
    for name, member in (("primary", remote), ("restore", restore_member.remote)):
        key = _read_text(member, paths.public_key)
        hosts.public_keys[name] = " ".join((key or f"<{name} key, generated on apply>").split()[:2])

    if golf1.backup_server.managed:
        backup_member = fleet.one("backup")
        step("backup server prepared like a Storage Box")(
            lambda c: backup_server.prepare(c, list(hosts.public_keys.values()))
        )(fleet.context(backup_member))
        host_keys = golf1.backup_server.host_keys or backup_server.host_keys(backup_member.remote)
    else:
        host_keys = golf1.backup_server.host_keys
    step("primary: access to the repository")(lambda c: restic.access(c, hosts.backup_address, host_keys))(
        ctx
    )
    step("restore host: password and access to the repository")(
        lambda c: restore.credentials(c, password, hosts.backup_address, host_keys)
    )(restore_ctx)
    step("restic repository")(restic.repository)(ctx)
    restic.schedule(ctx)
    return hosts


@dataclass(frozen=True)
class BackupRun:
    nonce_key: str
    nonce: str
    started: float
    taken: list[dict[str, Any]]  # the newest snapshot after each of the two runs
    kept: list[str]  # the repository's snapshot ids after both runs
    before: dict[str, str]
    after: dict[str, str]
    durations: list[float]
    prometheus_window: list[Any]  # the primary's samples before the backup


def _etcdctl(arguments: str) -> str:
    return (
        f"ETCDCTL_API=3 etcdctl --endpoints={etcd.CLIENT_URL} --cacert={etcd.CA} "
        f"--cert={etcd.CLIENT_CERT} --key={etcd.CLIENT_KEY} {arguments}"
    )


def _snapshots(remote: Host) -> list[dict[str, Any]]:
    output = remote.run(f"{restic.WRAPPER} snapshots --json --tag {restic.TAG} --host $(hostname)").stdout
    return sorted(json.loads(output) or [], key=lambda snapshot: snapshot["time"])


def _primary_samples(target, settings: Settings, at: float) -> list[Any]:
    url = f"http://{target.address}:{settings.port('Charlie', 'prometheus')}/api/v1/query"
    answer = requests.get(
        url, params={"query": f"{PROBE_SERIES}[{SAMPLE_WINDOW}]", "time": f"{at:.3f}"}, timeout=10
    )
    answer.raise_for_status()
    return answer.json()["data"]["result"]


@pytest.fixture(scope="module")
def backup_run(applied: Hosts, remote: Host, target, settings: Settings) -> Iterator[BackupRun]:
    """Two runs of the backup service, after writing a key to etcd; the source's digests
    before and after. The key is deleted again at the end; the snapshots stay (they are the
    repository's, and retention prunes them)."""
    golf1 = settings.golf1
    paths = restic.backup_paths(settings)
    nonce = secrets.token_hex(8)
    nonce_key = f"/hvsuite/golf1/drill-{nonce}"
    if golf1.etcd_snapshot:
        remote.run(_etcdctl(f"put {nonce_key} {nonce}"))
    try:
        started = time.time()
        window = _primary_samples(target, settings, started - 5) if golf1.prometheus_snapshot else []
        durations, taken, before = [], [], {}
        for run in range(2):
            if run == 1:  # the source as the restored (second) backup starts reading it
                before = backup_checks.digests(remote, "/", paths)
            begin = time.monotonic()
            remote.run(f"systemctl start {golf1.unit}.service", timeout=900)
            durations.append(time.monotonic() - begin)
            newest = _snapshots(remote)
            assert newest, f"{golf1.unit}.service left no snapshot in the repository"
            taken.append(newest[-1])
        after = backup_checks.digests(remote, "/", paths)
        kept = [snapshot["id"] for snapshot in _snapshots(remote)]
        yield BackupRun(nonce_key, nonce, started, taken, kept, before, after, durations, window)
    finally:
        if golf1.etcd_snapshot:
            remote.run(_etcdctl(f"del {nonce_key}"), check=False)


@dataclass
class Drill:
    snapshot: str
    restore_seconds: float
    comparison: backup_checks.Comparison
    etcd_value: str | None = None
    etcd_cluster_keys: list[str] = field(default_factory=list)
    prometheus_window: list[Any] = field(default_factory=list)
    units_left: dict[str, str] = field(default_factory=dict)
    trees_left: bool = True
    etcd_errors: list[str] = field(default_factory=list)
    prometheus_errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def drill(applied: Hosts, backup_run: BackupRun, settings: Settings) -> Drill:
    """The restore onto the restore host: the files, then etcd and Prometheus served from the
    restored snapshots by throwaway transient units, which are stopped and removed (with the
    restored trees) before any check looks at the results."""
    golf1 = settings.golf1
    host: Host = applied.restore.remote
    plan = restore.Drill(settings)
    snapshot = backup_run.taken[-1]["id"]
    for command in plan.stop():
        host.run(command, check=False)
    try:
        begin = time.monotonic()
        host.run(plan.restore(snapshot), timeout=1800)
        seconds = time.monotonic() - begin
        restored = backup_checks.digests(host, plan.target, restic.backup_paths(settings))
        result = Drill(
            snapshot,
            seconds,
            backup_checks.compare(
                backup_run.before,
                backup_run.after,
                restored,
                written_by_backup=(golf1.staging_dir.lstrip("/"),),
            ),
        )
        allure.attach(
            result.comparison.listing(withheld=(restic.files(settings).password, restic.files(settings).key)),
            name="sha256 of the restored files",
            attachment_type=allure.attachment_type.TEXT,
        )
        if golf1.etcd_snapshot:
            host.run(f"mkdir -p {plan.work} && {plan.etcd_restore()}")
            host.run(plan.etcd_serve())
            health = eventually(
                lambda: host.run(plan.etcdctl("endpoint health"), check=False),
                lambda answer: answer.ok,
                timeout=SERVE_TIMEOUT,
            )
            if health.ok:
                got = host.run(plan.etcdctl(f"get {backup_run.nonce_key} --print-value-only"))
                result.etcd_value = got.stdout.strip()
                keys = host.run(plan.etcdctl("get /registry/namespaces/ --prefix --keys-only"))
                result.etcd_cluster_keys = [line for line in keys.stdout.splitlines() if line]
            else:
                result.etcd_errors.append(f"restored etcd never healthy: {health.stderr or health.stdout}")
        if golf1.prometheus_snapshot:
            host.run(f"mkdir -p {plan.work} && {plan.prometheus_copy()}")
            host.run(plan.prometheus_serve())
            ready = eventually(
                lambda: host.run(f"curl -fsS {plan.prometheus_url}/-/ready", check=False),
                lambda answer: answer.ok,
                timeout=SERVE_TIMEOUT,
            )
            if ready.ok:
                answer = backup_checks.local_json(
                    host,
                    f"{plan.prometheus_url}/api/v1/query",
                    data={
                        "query": f"{PROBE_SERIES}[{SAMPLE_WINDOW}]",
                        "time": f"{backup_run.started - 5:.3f}",
                    },
                )
                result.prometheus_window = answer["data"]["result"]
            else:
                why = ready.stderr or ready.stdout
                result.prometheus_errors.append(f"restored Prometheus never ready: {why}")
    finally:
        for command in plan.stop():
            host.run(command, check=False)
    result.units_left = {
        unit: host.run(f"systemctl show -p LoadState --value {unit}", check=False).stdout.strip()
        for unit in plan.units()
    }
    result.trees_left = host.run(f"test -e {plan.target} || test -e {plan.work}", check=False).ok
    return result


def _reports_dir(config: pytest.Config) -> Path:
    value = config.getoption("engine_reports_dir", None) or config.getini("reports_dir")
    path = Path(value)
    return path if path.is_absolute() else config.rootpath / path


@pytest.fixture(scope="module")
def runbook_text(
    request: pytest.FixtureRequest,
    applied: Hosts,
    remote: Host,
    target,
    settings: Settings,
    drill: Drill,
    backup_run: BackupRun,
) -> str:
    golf1 = settings.golf1
    next_run = remote.run(
        f"systemctl show -p NextElapseUSecRealtime --value {golf1.unit}.timer", check=False
    ).stdout.strip()
    facts = runbook.Facts(
        primary=remote.run("hostname").stdout.strip(),
        primary_address=target.address,
        backup_address=applied.backup_address,
        restore_address=applied.restore.target.address,
        next_run=next_run or "not scheduled",
        public_keys=applied.public_keys,
        figures={
            "backup runs (s)": ", ".join(f"{seconds:.1f}" for seconds in backup_run.durations),
            "restore (s)": f"{drill.restore_seconds:.1f}",
            "files compared byte for byte": str(len(drill.comparison.compared)),
        },
    )
    text = runbook.render(settings, facts)
    path = _reports_dir(request.config) / runbook.FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    allure.attach(text, name="DR runbook", attachment_type=allure.attachment_type.TEXT, extension="md")
    return text


# -- Backup system ---------------------------------------------------------------------


@pytest.mark.task("Backup system")
def test_the_repository_password_is_root_only_and_never_logged(
    remote: Host, settings: Settings, host
) -> None:
    path = restic.files(settings).password
    assert host.check_output(f"stat -c %U:%G:%a {shlex.quote(path)}") == "root:root:600"
    secret = (_read_text(remote, path) or "").strip()
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
def test_the_backup_user_gets_sftp_and_no_shell(applied: Hosts, remote: Host, settings: Settings) -> None:
    if not settings.golf1.backup_server.managed:
        not_applicable(
            "golf1.backup_server.managed is false: the provider's SFTP-only server is not the suite's"
        )
    paths = restic.files(settings)
    marker = secrets.token_hex(8)
    shell = remote.run(
        f"timeout 30 ssh -n -F {paths.ssh_config} {restic.SSH_ALIAS} echo {marker}", check=False
    )
    assert marker not in shell.stdout, "the backup user ran a shell command"
    listing = remote.run(
        f"echo ls | timeout 30 sftp -F {paths.ssh_config} -b - {restic.SSH_ALIAS}", check=False
    )
    assert listing.ok, listing.stderr


@pytest.mark.task("Backup system")
def test_the_backup_service_makes_a_snapshot_of_what_is_configured(
    backup_run: BackupRun, settings: Settings, host
) -> None:
    first, latest = backup_run.taken
    assert first["id"] != latest["id"], "the second run made no snapshot of its own"
    present = [path for path in restic.backup_paths(settings) if host.file(path).exists]
    assert sorted(latest["paths"]) == sorted(present)
    assert settings.golf1.staging_dir in latest["paths"]


@pytest.mark.task("Backup system")
def test_retention_is_applied_after_each_backup(
    backup_run: BackupRun, remote: Host, settings: Settings
) -> None:
    dry_run = remote.run(restic.forget_command(settings, dry_run=True) + " --json").stdout
    groups = json.loads(dry_run) or []
    would_remove = [snapshot["short_id"] for group in groups for snapshot in group.get("remove") or []]
    assert would_remove == [], f"the policy was not applied: it would still remove {would_remove}"
    first, latest = backup_run.taken
    assert latest["id"] in backup_run.kept
    # Both runs fall in one daily bucket (unless midnight fell between them): the policy
    # keeps one snapshot per bucket, so forget --prune removed the first.
    if settings.golf1.retention.keep_daily and first["time"][:10] == latest["time"][:10]:
        assert first["id"] not in backup_run.kept, "the first run's snapshot was not forgotten"


@pytest.mark.task("Backup system")
def test_the_repository_passes_restic_check(backup_run: BackupRun, remote: Host, settings: Settings) -> None:
    result = remote.run(restic.check_command(settings), check=False, timeout=1800)
    assert result.ok, result.stdout + result.stderr
    assert "no errors were found" in result.stdout


# -- Restore testing -------------------------------------------------------------------


@pytest.mark.task("Restore testing")
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
def test_the_restored_etcd_answers_a_key_written_before_the_backup(
    drill: Drill, backup_run: BackupRun, settings: Settings
) -> None:
    if not settings.golf1.etcd_snapshot:
        not_applicable("golf1.etcd_snapshot is off: no etcd snapshot is backed up")
    assert not drill.etcd_errors, drill.etcd_errors
    assert drill.etcd_value == backup_run.nonce
    assert "/registry/namespaces/kube-system" in drill.etcd_cluster_keys, drill.etcd_cluster_keys


@pytest.mark.task("Restore testing")
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
def test_flintlocks_state_is_restored(drill: Drill, settings: Settings) -> None:
    state = settings.base.state_dir.lstrip("/") + "/"
    restored = [path for path in drill.comparison.compared if path.startswith(state)]
    assert restored, f"nothing of {settings.base.state_dir} was restored byte for byte"


@pytest.mark.task("Restore testing")
def test_the_throwaway_servers_and_restored_trees_are_gone(drill: Drill) -> None:
    assert set(drill.units_left.values()) == {"not-found"}, drill.units_left
    assert not drill.trees_left


# -- DR procedures ---------------------------------------------------------------------


@pytest.mark.task("DR procedures")
def test_the_runbook_names_what_is_configured_and_the_proven_restore(
    runbook_text: str, applied: Hosts, drill: Drill, settings: Settings, request: pytest.FixtureRequest
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
    password = (_read_text(applied.restore.remote, restic.files(settings).password) or "").strip()
    assert password and password not in runbook_text
    assert (_reports_dir(request.config) / runbook.FILE_NAME).read_text() == runbook_text
