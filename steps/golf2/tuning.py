"""Team Golf-2: the kernel tuning profile of a microVM host, set live and persisted.

One file of the team's own under /etc/sysctl.d holds the whole profile, validated by
``sysctl --dry-run`` (procps parses it and finds every key, writing nothing) before it
replaces the live one. The per-network-namespace ``net.*`` keys are set live everywhere.
The host-wide keys are set live, and persisted, only where the profile does not waive
"host-kernel": a container shares its host's kernel, and systemd-sysctl applies every
/etc/sysctl.d file whenever such a server boots, so there they are written commented out
(and still validated, see ``validate_command``). A conntrack key needs nf_conntrack loaded
before systemd-sysctl runs at boot: where the kernel is the host's own, the team's
modules-load.d file loads it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.facts import Sysctl, normalize_sysctl
from apply.runner import ApplyError, Host
from settings.base import EffectiveProfile, Waiver
from steps.golf2.settings import Golf2Settings

TEMPLATES = Path(__file__).parent / "templates"
# The team's own files; Alpha's (60-) and Delta's (90-) sysctl files set no key of this one.
SYSCTL_FILE = "/etc/sysctl.d/70-hvsuite-golf2.conf"
MODULES_FILE = "/etc/modules-load.d/70-hvsuite-golf2.conf"
CONNTRACK_PREFIX = "net.netfilter.nf_conntrack_"


def host_kernel_waived(profile: EffectiveProfile) -> bool:
    return profile.waives(Waiver.HOST_KERNEL)


def live_sysctls(golf2: Golf2Settings, profile: EffectiveProfile) -> dict[str, str]:
    """Pure: the keys set live on this profile's hosts, values normalized as /proc/sys reads."""
    chosen = dict(golf2.namespaced_sysctls)
    if not host_kernel_waived(profile):
        chosen.update(golf2.host_sysctls)
    return {key: normalize_sysctl(value) for key, value in sorted(chosen.items())}


def render_sysctl_file(golf2: Golf2Settings, profile: EffectiveProfile) -> str:
    """Pure: the team's sysctl.d file on this profile's hosts."""
    waived = host_kernel_waived(profile)
    return ops.render(
        TEMPLATES / "sysctl.conf.j2",
        {
            "namespaced": sorted(golf2.namespaced_sysctls.items()),
            "host_wide": sorted(golf2.host_sysctls.items()),
            "waived": waived,
            "profile": profile.name,
        },
    )


def modules(golf2: Golf2Settings) -> list[str]:
    """Pure: kernel modules that must be loaded before systemd-sysctl applies the profile."""
    return ["nf_conntrack"] if any(key.startswith(CONNTRACK_PREFIX) for key in golf2.sysctls()) else []


def validate_command(values: Mapping[str, str]) -> str:
    """A read-only command that fails unless procps parses ``values`` as a sysctl.d file and
    finds every key on this kernel (``--dry-run`` writes nothing)."""
    lines = "".join(f"{key} = {value}\n" for key, value in sorted(values.items()))
    return f"printf %s {shlex.quote(lines)} | sysctl --dry-run --load=/dev/stdin"


def last_assignments(merged: str) -> dict[str, tuple[str, str]]:
    """Pure: from ``systemd-analyze cat-config sysctl.d`` (every file systemd-sysctl reads, in
    the order it applies them, each after a ``# /path`` line), each key's last assignment:
    ``{key: (file, value)}``, the value normalized as /proc/sys reads it."""
    found: dict[str, tuple[str, str]] = {}
    current = ""
    for raw in merged.splitlines():
        line = raw.strip()
        if line.startswith("# /"):
            current = line[2:].strip()
        elif line and not line.startswith(("#", ";")) and "=" in line:
            key, _, value = line.partition("=")
            key = key.strip().lstrip("-").replace("/", ".")
            found[key] = (current, normalize_sysctl(value))
    return found


def _live_commands(host: Host, wanted: Mapping[str, str]) -> list[str]:
    missing, commands = [], []
    for key, value in wanted.items():
        live = host.fact(Sysctl(key))
        if live is None:
            missing.append(key)
        elif live != value:
            commands.append(f"sysctl -w {shlex.quote(f'{key}={value}')}")
    if missing:
        raise ApplyError(
            f"[{host.name}] golf2: {', '.join(missing)} do not exist on this kernel; remove them from "
            "golf2.namespaced_sysctls / golf2.host_sysctls (or load the module that provides them)"
        )
    return commands


@step("Kernel tuning")
def apply(ctx: Context) -> None:
    """The tuning profile persisted in the team's sysctl.d file and set live."""
    golf2, host = ctx.settings.golf2, ctx.host
    wanted = live_sysctls(golf2, ctx.profile)
    # Every key is looked up before anything changes: a key this kernel lacks stops the step.
    commands = _live_commands(host, wanted) if host.mode != "verify" else []
    if host_kernel_waived(ctx.profile):
        if golf2.host_sysctls:
            # Commented out in the file, the host-wide keys are validated here instead.
            host.run(validate_command(golf2.host_sysctls))
    elif wanted_modules := modules(golf2):
        ops.file(host, MODULES_FILE, "# Managed by hvsuite (Golf-2).\n" + "\n".join(wanted_modules) + "\n")
    ops.file(
        host,
        SYSCTL_FILE,
        render_sysctl_file(golf2, ctx.profile),
        validate="sysctl --dry-run --load={path}",
    )
    host.execute(f"sysctls live: {', '.join(wanted)}", commands)
