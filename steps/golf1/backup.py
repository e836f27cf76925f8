"""Team Golf-1's apply, in order, over its hosts: restic and the repository's password on the
primary, the restore host's tools, the backup server prepared like a Storage Box (where the
suite manages it), access to the repository from both clients, the repository, the schedule.
Each part is a step of its own module; this one only orders them over the hosts (the primary's
context, the restore host's, the backup host's when managed) and carries the password from the
primary to the restore host, registered as a secret with both hosts' redactors before either
uses it."""

from __future__ import annotations

from dataclasses import dataclass

from apply.api import Context, Step
from apply.runner import ApplyError, Host
from steps.golf1 import backup_server, restic, restore


@dataclass(frozen=True)
class Access:
    """What the apply leaves for the checks and the DR runbook."""

    # The backup host's address only: an SFTP-only server is never logged into as a host.
    backup_address: str
    # "primary", "restore": the "<type> <base64>" of each client's key, authorized on the server.
    public_keys: dict[str, str]


def read_text(host: Host, path: str) -> str | None:
    data = host.read(path)
    return data.decode() if data is not None else None


def public_key(host: Host, path: str, name: str) -> str:
    """ "<type> <base64>" of the public key at ``path`` on ``host``, or a placeholder before
    the apply has generated it (check mode on a fresh host)."""
    return " ".join((read_text(host, path) or f"<{name} key, generated on apply>").split()[:2])


def apply(primary: Context, restore_host: Context, backup_host: Context | None) -> Access:
    """Golf-1's steps over its hosts; ``backup_host`` is needed when golf1.backup_server.managed."""
    settings = primary.settings
    server = settings.golf1.backup_server
    paths = restic.files(settings)
    address = primary.peers["backup"][0]

    restic.client(primary)
    restic.password(primary)
    Step("restore host: restic, etcd, Prometheus and its SSH key", restore.prepare)(restore_host)
    password = read_text(primary.host, paths.password)
    if password is None and primary.mode == "apply":
        raise ApplyError(f"[{primary.host.name}] {paths.password} is missing after the password step")
    password = password or ""
    if password.strip():
        for host in (primary.host, restore_host.host):
            host.redactor.add(password.strip())
    public_keys = {
        name: public_key(ctx.host, paths.public_key, name)
        for name, ctx in (("primary", primary), ("restore", restore_host))
    }

    if server.managed:
        if backup_host is None:
            raise ApplyError("golf1.backup_server.managed is true: pass the backup host's context")
        Step(
            "backup server prepared like a Storage Box",
            lambda c: backup_server.prepare(c, list(public_keys.values())),
        )(backup_host)
        host_keys = server.host_keys or backup_server.host_keys(backup_host.host)
    else:
        host_keys = server.host_keys
    Step("primary: access to the repository", lambda c: restic.access(c, address, host_keys))(primary)
    Step(
        "restore host: password and access to the repository",
        lambda c: restore.credentials(c, password, address, host_keys),
    )(restore_host)
    Step("restic repository", restic.repository)(primary)
    restic.schedule(primary)
    return Access(address, public_keys)
