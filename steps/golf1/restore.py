"""Team Golf-1: the restore host (role "restore", which starts empty) made ready for a restore,
and the commands a restore runs, shared by the restore drill and the DR runbook.

The host gets restic, its own SSH key (authorized on the backup server like the primary's),
the repository's password (copied from the primary by the controller, never logged) and the
tools that serve the restored snapshots: etcd and Prometheus from the OS archive, their
packaged services stopped and disabled, since only throwaway transient units run them here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from apply import ops
from apply.api import Context
from settings.model import Settings
from steps.golf1 import restic

# The packaged units the drill's tools come with: never running on the restore host.
PACKAGED_UNITS = ("etcd", "prometheus")
RESTORED_MEMBER = "hvsuite-restore"


def prepare(ctx: Context) -> None:
    """restic, the tools that serve the restored snapshots, and the host's own SSH key (ops on
    the restore host)."""
    host, golf1 = ctx.host, ctx.settings.golf1
    key = restic.files(ctx.settings).key
    ops.packages(host, golf1.restore.packages)
    for unit in PACKAGED_UNITS:
        ops.service(host, unit, enabled=False, running=False)
    ops.directory(host, golf1.config_dir, mode="0700")
    ops.directory(host, golf1.cache_dir, mode="0700")
    ops.command(
        host,
        f"ssh-keygen -q -t ed25519 -N '' -C hvsuite-restore@$(hostname) -f {shlex.quote(key)}",
        creates=key,
        name=f"generate the restore SSH key {key}",
    )


def credentials(ctx: Context, password: str, address: str, host_keys: list[str]) -> None:
    """The repository's password (root only) and access to the repository (ops on the
    restore host)."""
    # The primary's file as it is, so both hosts read the same password.
    ops.file(ctx.host, restic.files(ctx.settings).password, password, mode="0600", sensitive=True)
    restic.access(ctx, address, host_keys)


@dataclass(frozen=True)
class Drill:
    """Where a restore puts things on the restore host, and the commands it runs."""

    settings: Settings

    @property
    def target(self) -> str:
        return self.settings.golf1.restore.target_dir

    @property
    def work(self) -> str:
        # Copies the throwaway servers may write to: the restored tree stays as restored.
        return f"{self.target}-serve"

    def restored(self, source_path: str) -> str:
        return f"{self.target}{source_path}"

    def restore(self, snapshot: str) -> str:
        return f"{restic.WRAPPER} restore {shlex.quote(snapshot)} --target {shlex.quote(self.target)}"

    @property
    def etcd_peer_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.golf1.restore.etcd_peer_port}"

    @property
    def etcd_client_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.golf1.restore.etcd_client_port}"

    @property
    def etcd_data(self) -> str:
        return f"{self.work}/etcd"

    def etcd_restore(self) -> str:
        snapshot = self.restored(restic.snapshot_path(self.settings, restic.ETCD_SNAPSHOT))
        return (
            f"ETCDCTL_API=3 etcdctl snapshot restore {shlex.quote(snapshot)} --data-dir {self.etcd_data} "
            f"--name {RESTORED_MEMBER} --initial-cluster {RESTORED_MEMBER}={self.etcd_peer_url} "
            f"--initial-advertise-peer-urls {self.etcd_peer_url}"
        )

    def etcd_serve(self) -> str:
        unit = self.settings.golf1.restore.etcd_unit
        return (
            f"systemd-run --unit={unit} --collect /usr/bin/etcd --name {RESTORED_MEMBER} "
            f"--data-dir {self.etcd_data} --listen-client-urls {self.etcd_client_url} "
            f"--advertise-client-urls {self.etcd_client_url} --listen-peer-urls {self.etcd_peer_url} "
            f"--initial-advertise-peer-urls {self.etcd_peer_url} "
            f"--initial-cluster {RESTORED_MEMBER}={self.etcd_peer_url}"
        )

    def etcdctl(self, arguments: str) -> str:
        return f"ETCDCTL_API=3 etcdctl --endpoints={self.etcd_client_url} {arguments}"

    @property
    def prometheus_data(self) -> str:
        return f"{self.work}/prometheus"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.golf1.restore.prometheus_port}"

    def prometheus_copy(self) -> str:
        snapshot = self.restored(restic.snapshot_path(self.settings, restic.PROMETHEUS_SNAPSHOT))
        return f"cp -a {shlex.quote(snapshot)} {self.prometheus_data}"

    def prometheus_serve(self) -> str:
        unit = self.settings.golf1.restore.prometheus_unit
        # No scrape jobs: every series it returns comes from the snapshot. Retention far out,
        # so old blocks are served rather than deleted.
        return (
            f"printf 'global: {{}}\\n' > {self.work}/prometheus.yml && "
            f"systemd-run --unit={unit} --collect /usr/bin/prometheus "
            f"--config.file={self.work}/prometheus.yml --storage.tsdb.path={self.prometheus_data} "
            f"--storage.tsdb.retention.time=100y --web.listen-address=127.0.0.1:"
            f"{self.settings.golf1.restore.prometheus_port}"
        )

    def units(self) -> tuple[str, str]:
        restore = self.settings.golf1.restore
        return restore.etcd_unit, restore.prometheus_unit

    def stop(self) -> list[str]:
        """Stop the throwaway units (transient and --collect: gone once stopped) and remove
        the restored and working trees."""
        commands = [
            f"systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null"
            for unit in self.units()
        ]
        return [*commands, f"rm -rf -- {shlex.quote(self.target)} {shlex.quote(self.work)}"]
