"""Team Golf-1: the restic client on a host (the primary, and the restore host in a drill),
its repository on the backup host over SFTP, and the systemd service and timer that back up.

restic comes from the OS archive. Everything it needs is in one root-only directory
(``golf1.config_dir``): the repository's password (generated on the primary, never logged),
an SSH key of its own, the backup server's pinned host keys and an ssh_config naming them.
``hvsuite-restic`` wraps restic with these, so the service, the checks and the DR runbook run
the same command. The backup run itself is ``hvsuite-backup``: an etcd snapshot from this
host's own member, a Prometheus TSDB snapshot through the admin API (which Golf-1 asks
Charlie's Prometheus to serve), ``restic backup`` of what is configured, then ``restic forget
--prune`` with the retention policy.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.facts import CommandSucceeds
from apply.runner import ApplyError
from settings.model import Settings
from steps.charlie import prometheus as charlie_prometheus
from steps.charlie.grafana import password_commands
from steps.delta import etcd
from steps.golf1.settings import covering

TEMPLATES = Path(__file__).parent / "templates"

WRAPPER = "/usr/local/sbin/hvsuite-restic"
BACKUP_SCRIPT = "/usr/local/sbin/hvsuite-backup"
# The ssh_config host the repository URL names; ssh resolves it through the suite's file only.
SSH_ALIAS = "hvsuite-backup-repository"
ETCD_SNAPSHOT = "etcd.db"
PROMETHEUS_SNAPSHOT = "prometheus"
TAG = "hvsuite"


@dataclass(frozen=True)
class Files:
    """Where the client's files are on a host (all under golf1.config_dir, root only)."""

    config_dir: str

    @property
    def password(self) -> str:
        return f"{self.config_dir}/repository-password"

    @property
    def key(self) -> str:
        return f"{self.config_dir}/id_ed25519"

    @property
    def public_key(self) -> str:
        return f"{self.key}.pub"

    @property
    def known_hosts(self) -> str:
        return f"{self.config_dir}/known_hosts"

    @property
    def ssh_config(self) -> str:
        return f"{self.config_dir}/ssh_config"


def files(settings: Settings) -> Files:
    return Files(settings.golf1.config_dir)


def repository_url(settings: Settings) -> str:
    return f"sftp:{SSH_ALIAS}:{settings.golf1.backup_server.repository_path}"


def sftp_command(settings: Settings) -> str:
    return f"ssh -F {files(settings).ssh_config} {SSH_ALIAS} -s sftp"


def backup_paths(settings: Settings) -> list[str]:
    """Pure: what restic reads: the configured paths, Alpha's certificates and keys, the
    cluster's PKI, flintlock's state and the staged snapshots, each once."""
    golf1 = settings.golf1
    return covering(
        [*golf1.paths, settings.alpha.tls.cert_dir, etcd.PKI, settings.base.state_dir, golf1.staging_dir]
    )


def snapshot_path(settings: Settings, name: str) -> str:
    """Where a staged snapshot (``ETCD_SNAPSHOT``, ``PROMETHEUS_SNAPSHOT``) is on the primary,
    and below the restore target on the restore host."""
    return f"{settings.golf1.staging_dir}/{name}"


def known_hosts_line(address: str, port: int, key: str) -> str:
    host = address if port == 22 else f"[{address}]:{port}"
    return f"{host} {key}"


def render_ssh_config(settings: Settings, address: str) -> str:
    server = settings.golf1.backup_server
    paths = files(settings)
    return ops.render(
        TEMPLATES / "ssh_config.j2",
        {
            "alias": SSH_ALIAS,
            "address": address,
            "port": server.port,
            "user": server.user,
            "key": paths.key,
            "known_hosts": paths.known_hosts,
        },
    )


def render_wrapper(settings: Settings) -> str:
    return ops.render(
        TEMPLATES / "hvsuite-restic.sh.j2",
        {
            "repository": repository_url(settings),
            "password_file": files(settings).password,
            "cache_dir": settings.golf1.cache_dir,
            "sftp_command": sftp_command(settings),
        },
    )


def render_backup_script(settings: Settings) -> str:
    golf1 = settings.golf1
    return ops.render(
        TEMPLATES / "hvsuite-backup.sh.j2",
        {
            "wrapper": WRAPPER,
            "staging_dir": golf1.staging_dir,
            "etcd_snapshot": golf1.etcd_snapshot,
            "etcd_file": snapshot_path(settings, ETCD_SNAPSHOT),
            "etcd_command": etcd_snapshot_command(f"{snapshot_path(settings, ETCD_SNAPSHOT)}.part"),
            "prometheus_snapshot": golf1.prometheus_snapshot,
            "prometheus_url": f"http://127.0.0.1:{settings.port('Charlie', 'prometheus')}",
            "prometheus_tsdb": charlie_prometheus.STORAGE_PATH,
            "prometheus_dir": snapshot_path(settings, PROMETHEUS_SNAPSHOT),
            "paths": " ".join(map(shlex.quote, backup_paths(settings))),
            "excludes": " ".join(f"--exclude {shlex.quote(path)}" for path in golf1.excludes),
            "tag": TAG,
            "unit": golf1.unit,
            "keep": " ".join(golf1.retention.arguments()),
        },
    )


def etcdctl(arguments: str) -> str:
    """etcdctl against this host's own etcd member (the primary's, whatever members Foxtrot
    adds elsewhere), with Delta's client certificate."""
    return (
        f"ETCDCTL_API=3 etcdctl --endpoints={etcd.CLIENT_URL} --cacert={etcd.CA} "
        f"--cert={etcd.CLIENT_CERT} --key={etcd.CLIENT_KEY} {arguments}"
    )


def etcd_snapshot_command(dest: str) -> str:
    return etcdctl(f"snapshot save {shlex.quote(dest)}")


def forget_command(settings: Settings, *, dry_run: bool = False) -> str:
    keep = " ".join(settings.golf1.retention.arguments())
    mode = "--dry-run" if dry_run else "--prune"
    return f"{WRAPPER} forget {mode} --tag {TAG} --group-by host,tags {keep}"


def check_command(settings: Settings) -> str:
    return f"{WRAPPER} check --read-data-subset={settings.golf1.check_read_data_subset}"


def render_service(settings: Settings) -> str:
    return ops.render(TEMPLATES / "backup.service.j2", {"script": BACKUP_SCRIPT, "wrapper": WRAPPER})


def render_timer(settings: Settings) -> str:
    golf1 = settings.golf1
    return ops.render(
        TEMPLATES / "backup.timer.j2",
        {"schedule": golf1.schedule, "randomized_delay": golf1.randomized_delay, "unit": golf1.unit},
    )


def _client(ctx: Context) -> None:
    host, golf1 = ctx.host, ctx.settings.golf1
    paths = files(ctx.settings)
    ops.packages(host, golf1.packages)
    ops.directory(host, golf1.config_dir, mode="0700")
    ops.directory(host, golf1.cache_dir, mode="0700")
    ops.command(
        host,
        f"ssh-keygen -q -t ed25519 -N '' -C hvsuite-backup@$(hostname) -f {shlex.quote(paths.key)}",
        creates=paths.key,
        name=f"generate the backup SSH key {paths.key}",
    )


@step("restic client and its SSH key")
def client(ctx: Context) -> None:
    """restic installed, the root-only config directory and the host's own SSH key."""
    _client(ctx)


@step("restic repository password")
def password(ctx: Context) -> None:
    """The repository's password generated once on the primary, root only (0600)."""
    path = files(ctx.settings).password
    generate, valid = password_commands(path)
    ops.command(ctx.host, generate, unless=valid, name=f"generate the repository password in {path}")
    q = shlex.quote(path)
    ops.command(
        ctx.host,
        f"chown root:root {q} && chmod 0600 {q}",
        unless=f'test "$(stat -c %U:%G:%a {q})" = root:root:600',
        name="repository password readable by root only",
    )


def access(ctx: Context, address: str, host_keys: list[str]) -> None:
    """The backup server's pinned host keys, the ssh_config that names them and the restic
    wrapper (ops on ``ctx.host``; call inside a step)."""
    host, settings = ctx.host, ctx.settings
    paths = files(settings)
    port = settings.golf1.backup_server.port
    known = "".join(known_hosts_line(address, port, key) + "\n" for key in sorted(host_keys))
    ops.file(host, paths.known_hosts, known, mode="0600")
    ops.file(host, paths.ssh_config, render_ssh_config(settings, address), mode="0600")
    ops.file(host, WRAPPER, render_wrapper(settings), mode="0700", validate="sh -n {path}")


def repository_exists_command(settings: Settings) -> str:
    """Succeeds when the server holds a repository at the path (its ``config`` file), read
    over SFTP without the password."""
    path = f"{settings.golf1.backup_server.repository_path}/config"
    return f"printf 'ls {path}\\n' | sftp -q -b - -F {files(settings).ssh_config} {SSH_ALIAS}"


def repository(ctx: Context) -> None:
    """The repository initialised once (a no-op when it opens with the host's password). One
    that exists but does not open (a rebuilt host generated a new password) is an error that
    says how to put the old password back; it is never initialised over."""
    host, settings = ctx.host, ctx.settings
    opens = f"{WRAPPER} cat config >/dev/null 2>&1"
    if (
        host.mode != "verify"
        and not host.fact(CommandSucceeds(opens))
        and host.fact(CommandSucceeds(repository_exists_command(settings)))
    ):
        raise ApplyError(
            f"[{host.name}] the repository {repository_url(settings)} exists but does not open with the "
            f"password in {files(settings).password}: this host was rebuilt or its password replaced. "
            "Put the repository's password (from your password store, or the restore host's copy) "
            "into that file (root:root 0600) and run again; the suite never initialises over a repository."
        )
    ops.command(host, f"{WRAPPER} init", unless=opens, name=f"restic init {repository_url(settings)}")


@step("backup service and timer")
def schedule(ctx: Context) -> None:
    """Prometheus' admin API where snapshots are wanted, the backup script, its oneshot
    service and the timer, enabled and waiting."""
    host, settings = ctx.host, ctx.settings
    golf1 = settings.golf1
    if golf1.prometheus_snapshot:
        # Charlie renders the flag from Golf-1's hook; a host built before it gets it now.
        charlie_prometheus.refresh_flags(ctx)
    ops.directory(host, golf1.staging_dir, mode="0700")
    ops.file(host, BACKUP_SCRIPT, render_backup_script(settings), mode="0700", validate="sh -n {path}")
    unit_dir = "/etc/systemd/system"
    service = ops.file(host, f"{unit_dir}/{golf1.unit}.service", render_service(settings))
    timer = ops.file(
        host,
        f"{unit_dir}/{golf1.unit}.timer",
        render_timer(settings),
        validate="systemd-analyze calendar " + shlex.quote(golf1.schedule) + " >/dev/null",
    )
    ops.daemon_reload(host, force=service.changed or timer.changed)
    ops.service(host, f"{golf1.unit}.timer", enabled=True, running=True, restart=timer.changed)
