"""The settings of Team Golf-1 (the config's [golf1] section): restic backups of the primary
host to the backup host over SFTP, their schedule and retention, and the restore drill."""

from __future__ import annotations

import posixpath
import re
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from settings.base import Strict, TeamSettings

_ABSOLUTE_PATH = r"^/[A-Za-z0-9_.@+/-]*$"
_UNIT_NAME = r"^[a-z][a-z0-9-]{0,60}$"


class BackupServerSettings(Strict):
    """Where the restic repository lives: the host with role "backup", reached from the
    primary over SFTP with a key only (a Hetzner Storage Box in production: port 23, user
    u<number>, no shell)."""

    user: str = Field("hvsuite-backup", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    port: int = Field(22, ge=1, le=65535)
    # The repository's path on the server, relative to the SFTP user's home (a Storage Box
    # chroots its users to their home).
    repository_path: str = Field("hvsuite/restic", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    # True: the suite prepares the server like a Storage Box through the host's own context
    # (an SFTP-only user with the backup keys authorized). False: the server is SFTP-only
    # (a Storage Box); the operator authorizes the public keys the DR runbook lists, and
    # host_keys pins the server's host keys.
    managed: bool = True
    # The server's public host keys ("ssh-ed25519 AAAA..."); read from the server when managed.
    host_keys: list[str] = []

    @field_validator("host_keys")
    @classmethod
    def _host_keys(cls, keys: list[str]) -> list[str]:
        if any(key.startswith("FILL-IN") for key in keys):
            raise ValueError(
                "golf1.backup_server.host_keys still holds the example's placeholder. Fix: fill in the "
                "Storage Box's host key (ssh-keyscan -p 23 <storage box>), checked against the "
                "fingerprints Hetzner publishes; never guess"
            )
        bad = [
            key
            for key in keys
            if not re.fullmatch(r"(ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa) [A-Za-z0-9+/=]+", key)
        ]
        if bad:
            raise ValueError(
                f"golf1.backup_server.host_keys: {', '.join(map(repr, bad))} are not public host keys "
                "(write each as '<type> <base64>', e.g. from ssh-keyscan -p 23 <storage box>)"
            )
        return keys

    @model_validator(mode="after")
    def _pinned_when_unmanaged(self) -> BackupServerSettings:
        if not self.managed and not self.host_keys:
            raise ValueError(
                "golf1.backup_server.host_keys is empty while golf1.backup_server.managed is false: "
                "the suite cannot read an SFTP-only server's host keys itself; add them "
                '(host_keys = ["ssh-ed25519 AAAA..."], from ssh-keyscan -p <port> <server>, checked '
                "against the provider's published fingerprints)"
            )
        return self


class RetentionSettings(Strict):
    """restic forget --prune after every backup: the snapshots kept per time bucket."""

    keep_daily: int = Field(7, ge=0)
    keep_weekly: int = Field(4, ge=0)
    keep_monthly: int = Field(6, ge=0)
    keep_yearly: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _keeps_something(self) -> RetentionSettings:
        if not any((self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly)):
            raise ValueError(
                "golf1.retention keeps nothing: restic forget would remove every snapshot; "
                "set at least keep_daily (e.g. keep_daily = 7)"
            )
        return self

    def arguments(self) -> list[str]:
        """restic forget's --keep-* options, for the buckets that keep something."""
        return [
            f"--keep-{bucket} {count}"
            for bucket, count in (
                ("daily", self.keep_daily),
                ("weekly", self.keep_weekly),
                ("monthly", self.keep_monthly),
                ("yearly", self.keep_yearly),
            )
            if count
        ]


class RestoreSettings(Strict):
    """The restore drill on the host with role "restore", which starts empty."""

    # A fresh location: emptied before each drill and removed after it.
    target_dir: str = Field("/var/tmp/hvsuite-golf1-restore", pattern=_ABSOLUTE_PATH)
    # The throwaway etcd and Prometheus the restored snapshots are served by (loopback only,
    # transient systemd units with these names, stopped at the end of the drill).
    etcd_unit: str = Field("hvsuite-golf1-restore-etcd", pattern=_UNIT_NAME)
    prometheus_unit: str = Field("hvsuite-golf1-restore-prometheus", pattern=_UNIT_NAME)
    etcd_client_port: int = Field(12379, ge=1024, le=65535)
    etcd_peer_port: int = Field(12380, ge=1024, le=65535)
    prometheus_port: int = Field(19095, ge=1024, le=65535)
    # Debian packages the drill needs on the restore host (restic, and the tools that serve
    # the restored snapshots).
    packages: list[str] = ["restic", "etcd-server", "etcd-client", "prometheus", "curl"]

    @model_validator(mode="after")
    def _distinct_ports(self) -> RestoreSettings:
        ports = [self.etcd_client_port, self.etcd_peer_port, self.prometheus_port]
        if len(set(ports)) != len(ports):
            raise ValueError(
                "golf1.restore: etcd_client_port, etcd_peer_port and prometheus_port must differ "
                f"(got {ports}); pick three free loopback ports"
            )
        return self


class Golf1Settings(TeamSettings):
    """Team Golf-1: restic backups to an SFTP repository, a systemd timer, retention, the DR
    runbook and a restore drill."""

    section: ClassVar[str] = "golf1"

    packages: list[str] = ["restic", "etcd-client", "curl"]
    # What is backed up besides the snapshots below; overlapping paths are backed up once
    # (Alpha's certificates and the cluster's PKI live under /etc).
    paths: list[str] = ["/etc"]
    # Not backed up: caches that restic would only churn on.
    excludes: list[str] = []
    # An etcd snapshot from the primary's own member and a Prometheus TSDB snapshot (through
    # the admin API, which Charlie then serves), staged here before restic reads them.
    etcd_snapshot: bool = True
    prometheus_snapshot: bool = True
    staging_dir: str = Field("/var/backups/hvsuite", pattern=_ABSOLUTE_PATH)
    # Root-only: the repository's password (generated on the host), the SSH key and the
    # host keys of the backup server, the restic wrapper's settings.
    config_dir: str = Field("/etc/hvsuite-backup", pattern=_ABSOLUTE_PATH)
    cache_dir: str = Field("/var/cache/hvsuite-restic", pattern=_ABSOLUTE_PATH)
    # The systemd service and timer that run the backup.
    unit: str = Field("hvsuite-backup", pattern=_UNIT_NAME)
    # systemd.time(7) calendar expression (checked with systemd-analyze calendar on the host).
    schedule: str = Field("*-*-* 03:15:00", min_length=1)
    randomized_delay: str = Field("15min", pattern=r"^[0-9]+(s|min|h)?$")
    retention: RetentionSettings = RetentionSettings()
    # restic check --read-data-subset: how much of the pack data each integrity check reads.
    check_read_data_subset: str = Field("100%", pattern=r"^([1-9][0-9]?%|100%|[1-9][0-9]*/[1-9][0-9]*)$")
    backup_server: BackupServerSettings = BackupServerSettings()
    restore: RestoreSettings = RestoreSettings()

    @field_validator("paths", "excludes")
    @classmethod
    def _absolute(cls, paths: list[str], info: ValidationInfo) -> list[str]:
        bad = [path for path in paths if not re.fullmatch(_ABSOLUTE_PATH, path) or ".." in path.split("/")]
        if bad:
            raise ValueError(
                f"golf1.{info.field_name}: {', '.join(map(repr, bad))} are not absolute paths "
                "(write them like /etc or /var/lib/x)"
            )
        return paths

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        if "\n" in value or not re.fullmatch(r"[A-Za-z0-9*:,./~ -]+", value):
            raise ValueError(
                f"golf1.schedule {value!r} is no systemd calendar expression "
                '(write it like "*-*-* 03:15:00" or "daily")'
            )
        return value

    @model_validator(mode="after")
    def _something_to_back_up(self) -> Golf1Settings:
        if not self.paths:
            raise ValueError('golf1.paths is empty: nothing would be backed up (the default is ["/etc"])')
        return self

    def problems_with(self, config: Any) -> list[str]:
        # An SFTP-only server is reached as the inventory says: user and port must agree.
        server = self.backup_server
        if server.managed:
            return []
        problems = []
        for host in config.hosts:
            if "backup" in host.roles and host.ssh is not None and host.login:
                problems.append(
                    "golf1.backup_server.managed is false, so the suite must never log in to hosts "
                    f'"{host.name}" (an SFTP-only Storage Box has no shell): set login = false on its '
                    "[[hosts]] entry"
                )
            if "backup" not in host.roles or not (host.ssh or "").startswith("ssh://"):
                continue
            url = urlsplit(host.ssh)
            if url.username and url.username != server.user:
                problems.append(
                    f'golf1.backup_server.user is "{server.user}" but hosts "{host.name}" logs in as '
                    f'"{url.username}": set golf1.backup_server.user = "{url.username}"'
                )
            if (url.port or 22) != server.port:
                problems.append(
                    f'golf1.backup_server.port is {server.port} but hosts "{host.name}" is reached on port '
                    f"{url.port or 22}: set golf1.backup_server.port = {url.port or 22}"
                )
        return problems


def covering(paths: list[str]) -> list[str]:
    """Pure: ``paths`` without those inside another one, sorted (restic reads each once)."""
    normalized = sorted({posixpath.normpath(path) for path in paths})
    kept: list[str] = []
    for path in normalized:
        if not any(path == top or path.startswith(top.rstrip("/") + "/") for top in kept):
            kept.append(path)
    return kept
