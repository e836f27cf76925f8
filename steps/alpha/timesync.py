"""Time synchronisation with chrony: the primary follows ``alpha.time.servers`` and, with
``alpha.time.fleet_source_role``, a host of the fleet that serves its own clock.

Where the profile waives host-kernel the clock is the machine's, shared with every
container: chronyd runs with ``-x`` there (it measures and reports, but never sets the
clock). The configuration is written before the package is installed, so the daemon's
first start already uses it and never contacts the distribution's default pool.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apply import ops
from apply.api import Applied, Context, Step, step
from apply.facts import Fact
from apply.runner import Host, OpResult
from settings.base import EffectiveProfile, Waiver
from steps.alpha import sandbox

TEMPLATES = Path(__file__).parent / "templates"

CHRONY_CONF = "/etc/chrony/chrony.conf"
CHRONY_DEFAULTS = "/etc/default/chrony"
UNIT = "chrony.service"


def sets_clock(profile: EffectiveProfile) -> bool:
    return not profile.waives(Waiver.HOST_KERNEL)


def source_lines(servers: Sequence[str], fleet_sources: Sequence[str]) -> list[str]:
    lines = [f"{'pool' if 'pool' in name else 'server'} {name} iburst" for name in servers]
    # A fleet source is trusted as it is (its stratum is its local clock's).
    lines += [f"server {address} iburst minpoll 4 maxpoll 6" for address in fleet_sources]
    return lines


def render(
    servers: Sequence[str], fleet_sources: Sequence[str], *, clock: bool, serve_to: Sequence[str] = ()
) -> str:
    return ops.render(
        TEMPLATES / "chrony.conf.j2",
        {
            "sources": source_lines(servers, fleet_sources),
            "serves": bool(serve_to),
            "allow": list(serve_to),
            "sets_clock": clock,
        },
    )


def render_defaults(*, clock: bool) -> str:
    # -F 1: Debian's seccomp filter; -x: never touch the clock.
    options = "-F 1" if clock else "-F 1 -x"
    return (
        '# Managed by hvsuite (Team Alpha, "Time synchronisation"); changes here are overwritten.\n'
        f'DAEMON_OPTS="{options}"\n'
    )


def install(host: Host, conf: str, defaults: str) -> list[OpResult]:
    """chrony with ``conf`` and ``defaults``, written first; sandboxed; restarted on change."""
    config = [ops.file(host, CHRONY_CONF, conf), ops.file(host, CHRONY_DEFAULTS, defaults)]
    package = ops.packages(host, ["chrony"])
    confined = sandbox.sandbox(host, UNIT, sandbox.PROFILES[UNIT])
    changed = any(result.changed for result in [*config, confined])
    return [*config, package, confined, ops.service(host, UNIT, enabled=True, running=True, restart=changed)]


def fleet_sources(ctx: Context) -> list[str]:
    role = ctx.settings.alpha.time.fleet_source_role
    return list(ctx.peers.get(str(role), ())) if role is not None else []


@step("Time synchronisation")
def apply(ctx: Context) -> None:
    """chrony on this host, following the configured servers and the fleet's time source."""
    time = ctx.settings.alpha.time
    clock = sets_clock(ctx.profile)
    ops.directory(ctx.host, "/etc/chrony")
    install(ctx.host, render(time.servers, fleet_sources(ctx), clock=clock), render_defaults(clock=clock))


def serve(source: Context, clients: Sequence[str]) -> Applied:
    """The fleet's time source, a step on ``source``: chrony serving its local clock to
    ``clients`` (addresses) and following no one."""

    def function(ctx: Context) -> None:
        clock = sets_clock(ctx.profile)
        ops.directory(ctx.host, "/etc/chrony")
        install(ctx.host, render([], [], clock=clock, serve_to=clients), render_defaults(clock=clock))

    return Step("Time synchronisation (fleet source)", function)(source)


@dataclass(frozen=True)
class Tracking(Fact[dict[str, str]]):
    """``chronyc -n tracking`` as field -> value (Reference ID, Stratum, Leap status, ...)."""

    @property
    def command(self) -> str:
        return "chronyc -n tracking"

    def parse(self, output: str) -> dict[str, str]:
        return parse_tracking(output)


def parse_tracking(output: str) -> dict[str, str]:
    values = {}
    for line in output.splitlines():
        key, found, value = line.partition(":")
        if found:
            values[key.strip()] = value.strip()
    return values


_REFERENCE = re.compile(r"^[0-9A-F]{8} \((?P<name>[^)]*)\)$")


def reference(tracking: dict[str, str]) -> str | None:
    """The address chrony follows now; None while it follows nothing (or only itself)."""
    match = _REFERENCE.match(tracking.get("Reference ID", ""))
    if not match or tracking.get("Leap status") == "Not synchronised":
        return None
    return match["name"]
