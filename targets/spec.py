"""Parsing `--target`: `scratch`, `scratch:NAME`, `ssh://user@host[:port]` or an alias from
~/.ssh/config (its HostName, User, Port and IdentityFile are honoured)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paramiko

from targets import TargetError

_NAME = re.compile(r"^[a-z][a-z0-9-]{1,40}$")
_ALIAS = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class ScratchSpec:
    name: str


@dataclass(frozen=True)
class SSHSpec:
    """An existing server. `alias` is set when it came from an ssh config Host entry."""

    host: str
    user: str
    port: int
    key_file: Path | None
    alias: str | None = None
    # UserKnownHostsFile of the ssh config alias, if it names any.
    known_hosts: tuple[Path, ...] = ()

    @property
    def label(self) -> str:
        return self.alias or self.host


def parse_target(
    text: str,
    *,
    default_scratch: str,
    default_user: str = "root",
    default_port: int = 22,
    ssh_config: Path | None = None,
) -> ScratchSpec | SSHSpec:
    """Parse a target spec; raise TargetError naming the problem and the accepted forms."""
    forms = "use scratch, scratch:NAME, ssh://user@host[:port] or an alias from ~/.ssh/config"
    text = text.strip()
    if not text:
        raise TargetError(f"--target is empty; {forms}")
    if text == "scratch":
        return ScratchSpec(default_scratch)
    if text.startswith("scratch:"):
        name = text.removeprefix("scratch:")
        if not _NAME.match(name):
            raise TargetError(
                f"--target {text!r}: scratch server name {name!r} must match {_NAME.pattern} "
                "(lower case letters, digits, '-'; 2-41 characters)"
            )
        return ScratchSpec(name)
    if "://" in text:
        return _parse_url(text, default_user=default_user, default_port=default_port, forms=forms)
    if not _ALIAS.match(text):
        raise TargetError(f"--target {text!r} is neither a URL nor an ssh alias; {forms}")
    return resolve_alias(text, ssh_config=ssh_config, default_user=default_user, default_port=default_port)


def _parse_url(text: str, *, default_user: str, default_port: int, forms: str) -> SSHSpec:
    parts = urlsplit(text)
    if parts.scheme != "ssh":
        raise TargetError(f"--target {text!r}: scheme {parts.scheme!r} is not supported; {forms}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise TargetError(f"--target {text!r}: unexpected path or query; write ssh://user@host[:port]")
    if parts.password is not None:
        raise TargetError(
            f"--target {text!r}: passwords are not accepted in the URL; the suite logs in with a key "
            "(ssh.key in the config or IdentityFile in ~/.ssh/config)"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise TargetError(f"--target {text!r}: port must be a number between 1 and 65535") from exc
    if not parts.hostname:
        raise TargetError(f"--target {text!r} names no host; write ssh://user@host[:port]")
    if port is not None and not 1 <= port <= 65535:
        raise TargetError(f"--target {text!r}: port {port} is out of range 1-65535")
    return SSHSpec(
        host=parts.hostname,
        user=parts.username or default_user,
        port=port or default_port,
        key_file=None,
    )


def resolve_alias(
    alias: str, *, ssh_config: Path | None, default_user: str = "root", default_port: int = 22
) -> SSHSpec:
    """Look `alias` up in an OpenSSH client config (HostName, User, Port, IdentityFile)."""
    path = (ssh_config or Path("~/.ssh/config")).expanduser()
    if not path.is_file():
        # No ssh config: the alias is a plain host name (DNS), as for `ssh NAME`.
        return SSHSpec(host=alias, user=default_user, port=default_port, key_file=None)
    try:
        config = paramiko.SSHConfig.from_path(str(path))
        entry = config.lookup(alias)
    except (OSError, paramiko.ssh_exception.ConfigParseError) as exc:
        raise TargetError(f"cannot read ssh config {path}: {exc}") from exc
    known = alias in config.get_hostnames()
    try:
        port = int(entry.get("port", default_port))
    except ValueError as exc:
        raise TargetError(f"{path}: Port {entry.get('port')!r} for Host {alias} is not a number") from exc
    identity = entry.get("identityfile")
    key_file = Path(identity[0]).expanduser() if identity else None
    known_hosts = entry.get("userknownhostsfile", "") if known else ""
    return SSHSpec(
        host=entry.get("hostname", alias),
        user=entry.get("user", default_user),
        port=port,
        key_file=key_file,
        alias=alias if known else None,
        known_hosts=tuple(Path(p).expanduser() for p in str(known_hosts).split() if p != "/dev/null"),
    )
