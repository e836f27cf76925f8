"""Facts: small read-only queries of a host, each a command plus a pure parser.

A fact never changes the host. Commands are written to exit 0 when the thing they ask
about is simply absent (the parser then returns None or an empty value), so a non-zero
exit is a real error the runner reports. Parsers are unit-tested without a host.

Facts are frozen dataclasses: equal facts share one cache entry in ``Host.fact``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

T = TypeVar("T")


class Fact(Generic[T]):
    """Base of all facts: ``command`` to run, ``parse(stdout)`` to turn its output into T."""

    ok_exit_codes: ClassVar[tuple[int, ...]] = (0,)

    @property
    def command(self) -> str:
        raise NotImplementedError

    def parse(self, output: str) -> T:
        raise NotImplementedError


def _key_values(output: str, sep: str = "=") -> dict[str, str]:
    values: dict[str, str] = {}
    for line in output.splitlines():
        key, found, value = line.partition(sep)
        if found:
            values[key.strip()] = value.strip()
    return values


# -- packages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DebPackages(Fact[dict[str, str]]):
    """Installed Debian packages: name -> version (only fully installed, status "ii")."""

    @property
    def command(self) -> str:
        # Absent dpkg (not Debian) prints nothing rather than failing the read.
        return (
            "if command -v dpkg-query >/dev/null 2>&1; then "
            "dpkg-query -W -f='${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'; fi"
        )

    def parse(self, output: str) -> dict[str, str]:
        packages: dict[str, str] = {}
        for line in output.splitlines():
            parts = line.split("\t")
            if len(parts) != 3:
                continue
            name, version, status = parts
            if status.strip() == "ii":
                packages[name] = version
        return packages


@dataclass(frozen=True)
class AptListsAge(Fact[float | None]):
    """Seconds since apt's package lists were last updated; None when there are none."""

    @property
    def command(self) -> str:
        return (
            "newest=$(find /var/lib/apt/lists -maxdepth 1 -type f -name '*_Packages*' "
            "-printf '%T@\\n' 2>/dev/null | sort -n | tail -n 1); "
            'echo "now=$(date +%s)"; echo "newest=$newest"'
        )

    def parse(self, output: str) -> float | None:
        values = _key_values(output)
        if "now" not in values:
            raise ValueError(f"no 'now=' line in {output!r}")
        if not values.get("newest"):
            return None
        return max(0.0, float(values["now"]) - float(values["newest"]))


# -- files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileStat:
    type: str  # "file", "directory", "link", "other"
    user: str
    group: str
    mode: str  # four octal digits, like "0644"
    size: int


_STAT_TYPES = {
    "regular file": "file",
    "regular empty file": "file",
    "directory": "directory",
    "symbolic link": "link",
}


@dataclass(frozen=True)
class FileInfo(Fact[FileStat | None]):
    """Type, owner, group, mode and size of a path (not following symlinks); None if absent."""

    path: str

    @property
    def command(self) -> str:
        q = shlex.quote(self.path)
        return f"if [ -e {q} ] || [ -L {q} ]; then stat -c '%F|%U|%G|%a|%s' -- {q}; fi"

    def parse(self, output: str) -> FileStat | None:
        line = output.strip()
        if not line:
            return None
        parts = line.split("|")
        if len(parts) != 5:
            raise ValueError(f"unexpected stat output {line!r}")
        kind, user, group, mode, size = parts
        return FileStat(_STAT_TYPES.get(kind, "other"), user, group, mode.zfill(4), int(size))


@dataclass(frozen=True)
class FileSha256(Fact[str | None]):
    """sha256 of a regular file; None if the path is not a regular file."""

    path: str

    @property
    def command(self) -> str:
        q = shlex.quote(self.path)
        return f"if [ -f {q} ]; then sha256sum -- {q}; fi"

    def parse(self, output: str) -> str | None:
        line = output.strip()
        if not line:
            return None
        digest = line.split()[0].lstrip("\\")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"unexpected sha256sum output {line!r}")
        return digest


@dataclass(frozen=True)
class Which(Fact[str | None]):
    """Path of an executable on PATH, or None."""

    name: str

    @property
    def command(self) -> str:
        return f"command -v {shlex.quote(self.name)} || true"

    def parse(self, output: str) -> str | None:
        return output.strip() or None


# -- commands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandSucceeds(Fact[bool]):
    """Whether a shell command exits 0 (its output is discarded)."""

    shell: str

    @property
    def command(self) -> str:
        return f"if ( {self.shell} ) >/dev/null 2>&1 </dev/null; then echo yes; else echo no; fi"

    def parse(self, output: str) -> bool:
        answer = output.strip()
        if answer not in ("yes", "no"):
            raise ValueError(f"expected yes/no, got {answer!r}")
        return answer == "yes"


# -- services ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    load_state: str  # loaded, not-found, masked, ...
    active_state: str  # active, inactive, failed, activating, ...
    unit_file_state: str  # enabled, disabled, static, masked, "" ...
    need_daemon_reload: bool

    @property
    def exists(self) -> bool:
        return self.load_state not in ("not-found", "")

    @property
    def enabled(self) -> bool:
        return self.unit_file_state in ("enabled", "enabled-runtime", "alias", "static", "generated")

    @property
    def running(self) -> bool:
        return self.active_state in ("active", "reloading", "activating")


@dataclass(frozen=True)
class ServiceState(Fact[ServiceStatus]):
    """systemd's view of a unit (``systemctl show``, which exits 0 for unknown units)."""

    name: str

    @property
    def command(self) -> str:
        return (
            "systemctl show -p LoadState -p ActiveState -p UnitFileState -p NeedDaemonReload "
            f"-- {shlex.quote(self.name)}"
        )

    def parse(self, output: str) -> ServiceStatus:
        values = _key_values(output)
        if "LoadState" not in values:
            raise ValueError(f"no LoadState in systemctl output {output!r}")
        return ServiceStatus(
            load_state=values["LoadState"],
            active_state=values.get("ActiveState", ""),
            unit_file_state=values.get("UnitFileState", ""),
            need_daemon_reload=values.get("NeedDaemonReload", "no") == "yes",
        )


# -- kernel -----------------------------------------------------------------------------


def normalize_sysctl(value: str) -> str:
    """Sysctl values with several fields are tab-separated in /proc; compare them space-joined."""
    return " ".join(str(value).split())


@dataclass(frozen=True)
class Sysctl(Fact[str | None]):
    """Live value of a sysctl key (from /proc/sys), whitespace-normalized; None if unknown."""

    key: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", self.key):
            raise ValueError(f"sysctl key {self.key!r} is not a dotted name like net.ipv4.ip_forward")

    @property
    def command(self) -> str:
        path = "/proc/sys/" + self.key.replace(".", "/")
        q = shlex.quote(path)
        return f"if [ -r {q} ]; then echo present; cat -- {q}; fi"

    def parse(self, output: str) -> str | None:
        marker, _, value = output.partition("\n")
        if marker.strip() != "present":
            return None
        return normalize_sysctl(value)


# -- system -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OsRelease(Fact[dict[str, str]]):
    """/etc/os-release as a dict (ID, VERSION_ID, VERSION_CODENAME, ...)."""

    @property
    def command(self) -> str:
        return "cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release"

    def parse(self, output: str) -> dict[str, str]:
        values: dict[str, str] = {}
        for line in output.splitlines():
            key, found, value = line.partition("=")
            if found and key.strip() and not key.startswith("#"):
                parsed = shlex.split(value) if value.strip() else [""]
                values[key.strip()] = parsed[0] if parsed else ""
        return values


@dataclass(frozen=True)
class Session:
    """The SSH session the suite runs on, as the host sees it."""

    client: str  # the address the controller connects from (what a firewall sees)
    server: str
    port: int  # a port sshd listens on, and that the controller can reach


@dataclass(frozen=True)
class SSHSession(Fact[Session]):
    """The SSH session the suite runs on (``$SSH_CONNECTION``)."""

    @property
    def command(self) -> str:
        return 'echo "$SSH_CONNECTION"'

    def parse(self, output: str) -> Session:
        fields = output.split()
        if len(fields) != 4 or not fields[3].isdigit():
            raise ValueError(f"SSH_CONNECTION is {output.strip()!r}; the suite must run over SSH")
        return Session(fields[0], fields[2], int(fields[3]))
