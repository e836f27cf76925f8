"""Team Golf-3: a systemd slice per tenant, with its CPU and memory limits.

Each tenant's slice is a unit file of the team's own under /etc/systemd/system, named
``<golf3.slice_prefix>-<tenant>.slice`` (the tenant's dashes as underscores: a dash in a
slice's name nests it in another slice). It is validated by ``systemd-analyze verify`` before
it replaces the live one, enabled (``slices.target``) and started, so its limits are in the
kernel before any process of the tenant runs; a changed file is put live by the daemon-reload
(systemd applies a slice's new limits to its cgroup then). A slice the config no longer
declares is stopped, disabled and removed. stress-ng (Debian) is installed for the check
that holds a bounded stress run to the limits.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.facts import Fact
from apply.runner import Host
from steps.golf3.settings import Golf3Settings, TenantSettings

TEMPLATES = Path(__file__).parent / "templates"
UNIT_DIR = "/etc/systemd/system"
PACKAGES = ["stress-ng"]


def render_slice(golf3: Golf3Settings, tenant: TenantSettings) -> str:
    """Pure: the tenant's slice unit file."""
    return ops.render(
        TEMPLATES / "tenant.slice.j2",
        {
            "tenant": tenant.name,
            "unit": golf3.slice(tenant),
            "cpu_quota": tenant.cpu_quota,
            "memory_max": tenant.memory_max,
        },
    )


def verify_unit(unit: str) -> str:
    """A ``validate`` command for a unit file: ``systemd-analyze verify`` on a copy named as
    the unit (it reads the type from the name), failing on any complaint, since it exits 0
    for values it ignores (an invalid CPUQuota, say)."""
    q = shlex.quote(unit)
    return (
        'd=$(mktemp -d) && cp {path} "$d"/' + q + ' && out=$(systemd-analyze verify "$d"/' + q + " 2>&1); "
        'rc=$?; rm -rf "$d"; [ "$rc" -eq 0 ] && [ -z "$out" ] || {{ printf "%s\\n" "$out" >&2; false; }}'
    )


@dataclass(frozen=True)
class UnitFiles(Fact[list[str]]):
    """Names of the unit files in ``directory`` matching the shell glob ``pattern``."""

    directory: str
    pattern: str

    @property
    def command(self) -> str:
        return (
            f"for f in {shlex.quote(self.directory)}/{self.pattern}; do "
            '[ -e "$f" ] && basename "$f"; done; true'
        )

    def parse(self, output: str) -> list[str]:
        return sorted(output.split())


def remove_stale_units(host: Host, wanted: set[str], pattern: str) -> None:
    """Units of ours (matching ``pattern``) the config no longer wants: stopped, disabled and
    their files removed."""
    if host.mode == "verify":
        return
    stale = [unit for unit in host.fact(UnitFiles(UNIT_DIR, pattern)) if unit not in wanted]
    for unit in stale:
        host.execute(
            f"remove unit {unit} (no longer configured)",
            [f"systemctl disable --now -- {shlex.quote(unit)}", f"rm -f -- {UNIT_DIR}/{shlex.quote(unit)}"],
            lock="systemd",
        )
    if stale:
        ops.daemon_reload(host, force=True)


@step("Tenant slices")
def apply(ctx: Context) -> None:
    host, golf3 = ctx.host, ctx.settings.golf3
    ops.packages(host, PACKAGES)
    units = {golf3.slice(tenant): tenant for tenant in golf3.tenants}
    written = [
        ops.file(
            host,
            f"{UNIT_DIR}/{unit}",
            render_slice(golf3, tenant),
            validate=verify_unit(unit),
        )
        for unit, tenant in units.items()
    ]
    # A running slice takes its new limits at the reload.
    ops.daemon_reload(host, units=list(units), force=any(result.changed for result in written))
    for unit in units:
        ops.service(host, unit, enabled=True, running=True)
    remove_stale_units(host, set(units), f"{golf3.slice_prefix}-*.slice")
