"""Team Golf-1: the backup host prepared like a Hetzner Storage Box, where the suite manages it
(``golf1.backup_server.managed``): an unprivileged user that may use SFTP and nothing else
(sshd's ``ForceCommand internal-sftp``, no forwarding), a home the repository lives in, and
the backup keys (the primary's, the restore host's) authorized. A real Storage Box is not
managed: its operator authorizes the keys the DR runbook lists, and the suite reaches it only
over SFTP from the primary.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from apply import ops
from apply.api import Context
from apply.runner import ApplyError, Host

TEMPLATES = Path(__file__).parent / "templates"

SSHD_DROPIN = "/etc/ssh/sshd_config.d/hvsuite-golf1-sftp.conf"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"


def home(user: str) -> str:
    return f"/home/{user}"


def render_sshd_dropin(user: str) -> str:
    return ops.render(TEMPLATES / "sshd-sftp-only.conf.j2", {"user": user})


def render_authorized_keys(public_keys: list[str]) -> str:
    """Pure: one restricted line per key (no forwarding, no pty, whatever sshd allows)."""
    return "".join(f"restrict {key.strip()}\n" for key in sorted({k.strip() for k in public_keys}))


def host_keys(host: Host) -> list[str]:
    """The server's ed25519 host key as "<type> <base64>", read through its own context."""
    data = host.read(HOST_KEY)
    if data is None:
        raise ApplyError(f"[{host.name}] {HOST_KEY} is missing: sshd has no ed25519 host key")
    kind, key, *_ = data.decode().split()
    return [f"{kind} {key}"]


def prepare(ctx: Context, public_keys: list[str]) -> None:
    """The SFTP-only user with ``public_keys`` authorized (ops on the backup host)."""
    host, server = ctx.host, ctx.settings.golf1.backup_server
    user = server.user
    q = shlex.quote(user)
    ops.command(
        host,
        f"useradd --create-home --home-dir {shlex.quote(home(user))} --shell /usr/sbin/nologin {q}",
        unless=f"id -u {q}",
        name=f"SFTP user {user}",
    )
    ops.directory(host, home(user), owner=user, group=user, mode="0700")
    ops.directory(host, f"{home(user)}/.ssh", owner=user, group=user, mode="0700")
    # The repository's parent directories: restic init creates only the last one.
    parent = server.repository_path.rpartition("/")[0]
    if parent:
        ops.directory(host, f"{home(user)}/{parent}", owner=user, group=user, mode="0700")
    ops.file(
        host,
        f"{home(user)}/.ssh/authorized_keys",
        render_authorized_keys(public_keys),
        owner=user,
        group=user,
        mode="0600",
    )
    dropin = ops.file(host, SSHD_DROPIN, render_sshd_dropin(user), validate="sshd -t -f {path}")
    ops.service(host, "ssh", enabled=True, running=True, reload=dropin.changed)
