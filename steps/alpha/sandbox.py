"""systemd sandboxing for services: a drop-in with the protections a service tolerates,
and the exposure ``systemd-analyze security`` gives it.

Later teams sandbox their own units with :func:`sandbox` (their own drop-in, their own
directives) and check them with :class:`Exposure` against a bound of their own::

    from steps.alpha import sandbox
    changed = sandbox.sandbox(host, "my.service", {**sandbox.BASE, "ProtectSystem": "strict"})
    ops.service(host, "my.service", restart=changed.changed)
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from apply import ops
from apply.facts import Fact
from apply.runner import Host, OpResult

DROPIN_NAME = "60-hvsuite-sandbox.conf"

# What nearly every daemon tolerates: no new privileges through exec, a private /tmp, no
# access to home directories, kernel tunables, modules, logs or control groups, no
# realtime scheduling, SUID/SGID files or personality changes.
BASE: dict[str, str] = {
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectHome": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}

# The sandbox of each service Alpha manages, as the service tolerates it.
PROFILES: dict[str, dict[str, str]] = {
    # fail2ban-server reads the journal, keeps its database in /var/lib/fail2ban and its
    # socket in /run/fail2ban, and runs nft for bans: it needs CAP_NET_ADMIN and netlink.
    "fail2ban.service": {
        **BASE,
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/fail2ban /run/fail2ban /var/log",
        "CapabilityBoundingSet": "CAP_NET_ADMIN CAP_NET_RAW CAP_DAC_READ_SEARCH CAP_AUDIT_READ",
        "RestrictAddressFamilies": "AF_UNIX AF_NETLINK AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
        "PrivateDevices": "yes",
    },
    # chronyd writes its drift file and sockets, and (unless -x) sets the clock: Debian's
    # unit already restricts it; these add what it still lacks.
    "chrony.service": {
        **BASE,
        "ProtectClock": "no",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/chrony /run/chrony /var/log/chrony",
        "RestrictAddressFamilies": "AF_UNIX AF_NETLINK AF_INET AF_INET6",
        "CapabilityBoundingSet": "CAP_SYS_TIME CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_CHOWN "
        "CAP_DAC_OVERRIDE CAP_FOWNER",
        "PrivateUsers": "no",
    },
    # accton only switches accounting on and off (CAP_SYS_PACCT). No mount namespace at all
    # (ProtectSystem, PrivateTmp, ProtectHome, ProtectKernel*, PrivateDevices): the kernel
    # stops accounting when the mount the file was opened through goes away, which a
    # service's private mounts do as soon as accton exits.
    "acct.service": {
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "CAP_SYS_PACCT",
        "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_UNIX",
        "PrivateNetwork": "yes",
        "IPAddressDeny": "any",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        # acct(2) is outside @system-service.
        "SystemCallFilter": "@system-service acct",
        "UMask": "0027",
    },
}


def dropin_path(unit: str, name: str = DROPIN_NAME) -> str:
    return f"/etc/systemd/system/{unit}.d/{name}"


def render(directives: Mapping[str, str]) -> str:
    for key, value in directives.items():
        if not re.fullmatch(r"[A-Z][A-Za-z]+", key) or "\n" in value:
            raise ValueError(f"sandbox directive {key}={value!r} is not a [Service] setting on one line")
    lines = "".join(f"{key}={value}\n" for key, value in sorted(directives.items()))
    return f"# Managed by hvsuite: the sandbox this service tolerates.\n[Service]\n{lines}"


def sandbox(host: Host, unit: str, directives: Mapping[str, str], *, name: str = DROPIN_NAME) -> OpResult:
    """``unit``'s sandbox drop-in with ``directives``, systemd reloaded when it changed.
    The caller restarts the service when the result changed (its own ``ops.service``)."""
    path = dropin_path(unit, name)
    ops.directory(host, path.rsplit("/", 1)[0])
    result = ops.file(host, path, render(directives))
    ops.daemon_reload(host, units=[unit], force=result.changed)
    return result


_OVERALL = re.compile(r"Overall exposure level for \S+:\s*(?P<level>\d+(?:\.\d+)?)")


def parse_exposure(output: str) -> float | None:
    """The overall exposure in ``systemd-analyze security <unit>`` output; None if absent."""
    match = _OVERALL.search(output)
    return float(match["level"]) if match else None


@dataclass(frozen=True)
class Exposure(Fact[float | None]):
    """``systemd-analyze security``'s overall exposure of a unit (0 safest, 10 unsafe)."""

    unit: str

    @property
    def command(self) -> str:
        return f"systemd-analyze security --no-pager -- {shlex.quote(self.unit)} 2>&1"

    def parse(self, output: str) -> float | None:
        return parse_exposure(output)
