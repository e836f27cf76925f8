"""Host baseline an auditor expects: hardened network sysctls, the security suite and
automatic security updates, the CIS / dev-sec items of ``steps.alpha.baseline`` (login
defaults, core dumps, modules, password quality, integrity, accounting and audit), the
sandbox of the services it installs, and no listening service that no team declared.

Sysctls: on a profile with ``namespaced_sysctls_only`` (a scratch server shares its kernel
with the developer's machine) only per-network-namespace ``net.*`` keys are written; any
other key is skipped and named in the op's reason rather than changing the host machine.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.facts import Fact
from apply.runner import Host, OpResult
from settings.base import EffectiveProfile
from settings.model import Settings
from steps.alpha import baseline, sandbox

TEMPLATES = Path(__file__).parent / "templates"


SYSCTL_FILE = "/etc/sysctl.d/60-hvsuite-alpha-net.conf"
AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
# apt's timers that run unattended-upgrades.
APT_TIMERS = ("apt-daily.timer", "apt-daily-upgrade.timer")


def sysctl_selection(values: Mapping[str, str], *, namespaced_only: bool) -> tuple[dict[str, str], list[str]]:
    """(keys to set, keys skipped because the profile allows only namespaced net.* keys)."""
    if not namespaced_only:
        return dict(values), []
    chosen = {key: value for key, value in values.items() if key.startswith("net.")}
    return chosen, sorted(set(values) - set(chosen))


def selected_sysctls(settings: Settings, profile: EffectiveProfile) -> tuple[dict[str, str], list[str]]:
    """``sysctl_selection`` of Alpha's sysctls under the run's profile."""
    return sysctl_selection(settings.alpha.sysctls, namespaced_only=profile.namespaced_sysctls_only)


def sysctls(host: Host, settings: Settings, profile: EffectiveProfile) -> OpResult:
    chosen, skipped = selected_sysctls(settings, profile)
    result = ops.sysctls(host, chosen, persist_file=SYSCTL_FILE)
    if skipped:
        return OpResult(
            result.op,
            result.changed,
            result.commands,
            result.diff,
            f"{result.reason}; skipped (profile allows only namespaced net.*): {', '.join(skipped)}",
        )
    return result


def automatic_updates(host: Host) -> list[OpResult]:
    """unattended-upgrades (the distribution's default origins: security updates) run by
    apt's daily timers."""
    return [
        ops.packages(host, ["unattended-upgrades"]),
        ops.template(host, AUTO_UPGRADES, TEMPLATES / "20auto-upgrades.j2", {}),
        *(ops.service(host, timer, enabled=True, running=True) for timer in APT_TIMERS),
    ]


def accounting(host: Host) -> list[OpResult]:
    """Process accounting, sandboxed, on at boot and now."""
    confined = sandbox.sandbox(host, "acct.service", sandbox.PROFILES["acct.service"])
    return [confined, ops.service(host, "acct.service", enabled=True, running=True, restart=confined.changed)]


@step("Host baseline")
def apply(ctx: Context) -> None:
    """Network sysctls hardened and persisted; the security suite and automatic security
    updates; then the baseline of ``steps.alpha.baseline``, its tools configured before
    they are installed."""
    host, settings, profile = ctx.host, ctx.settings, ctx.profile
    sysctls(host, settings, profile)
    # First, so every package below comes with its security fixes.
    baseline.security_updates(host, settings)
    if settings.alpha.unattended_upgrades:
        automatic_updates(host)
    baseline.login_defs(host, settings)
    baseline.core_dumps(host, profile)
    baseline.disabled_modules(host, settings)
    baseline.tools_config(host, settings)
    baseline.mask_auditd_first(host, profile)
    ops.packages(host, baseline.PACKAGES)
    baseline.integrity_baseline(host, settings)
    accounting(host)
    baseline.accounting_and_audit(host, settings, profile)


@dataclass(frozen=True)
class Listener:
    proto: str  # "tcp" or "udp"
    address: str
    port: int
    process: str

    @property
    def loopback_only(self) -> bool:
        try:
            return ipaddress.ip_address(self.address.split("%")[0]).is_loopback
        except ValueError:
            return False


_SS_LINE = re.compile(r"^(?P<proto>tcp|udp)\s+\S+\s+\d+\s+\d+\s+(?P<local>\S+)\s+\S+\s*(?P<rest>.*)$")
_PROCESS = re.compile(r'users:\(\("(?P<name>[^"]+)"')


def parse_ss(output: str) -> list[Listener]:
    """``ss -tulpnH`` lines as listeners (address without brackets, '*' for any)."""
    listeners = []
    for line in output.splitlines():
        match = _SS_LINE.match(line.strip())
        if not match:
            continue
        address, _, port = match["local"].rpartition(":")
        address = address.strip("[]")
        process = _PROCESS.search(match["rest"])
        listeners.append(Listener(match["proto"], address, int(port), process["name"] if process else ""))
    return listeners


@dataclass(frozen=True)
class Listeners(Fact[list[Listener]]):
    """Every TCP and UDP listener with its process (``ss -tulpnH``)."""

    @property
    def command(self) -> str:
        return "ss -tulpnH"

    def parse(self, output: str) -> list[Listener]:
        return parse_ss(output)


# How ss shows a socket bound to every address.
_ANY_ADDRESS = {"*", "0.0.0.0", "::"}


def public_tcp_ports(listeners: list[Listener], address: str | None = None) -> set[int]:
    """TCP ports something listens on beyond loopback; with ``address``, only those that a
    connection to it reaches (bound to it or to every address): HAProxy on a load balancer
    pool address the host also holds is not behind the host's own address."""
    return {
        listener.port
        for listener in listeners
        if listener.proto == "tcp"
        and not listener.loopback_only
        and (address is None or listener.address in _ANY_ADDRESS or listener.address == address)
    }


def undeclared_listeners(listeners: list[Listener], settings: Settings) -> list[Listener]:
    """Listeners reachable from outside (not loopback) on a port no team declared."""
    declared = {(rule.port, rule.proto) for rule in settings.ports}
    return [
        listener
        for listener in listeners
        if not listener.loopback_only and (listener.port, listener.proto) not in declared
    ]
