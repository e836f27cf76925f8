"""nftables firewall derived only from the declared ports and protocols (``settings.ports``,
``settings.protocols``).

Default deny incoming; established/related, loopback and the ICMP a host needs are
allowed; each declared port or protocol is opened to its sources ("world", "admin" =
``firewall.admin_sources``, "role:<role>" = the inventory's hosts holding the role, or
CIDRs). The suite owns one table (``inet hvsuite_filter``)
in its own file under /etc/nftables.d and never flushes the whole ruleset, so fail2ban's,
the container runtime's and Kubernetes' tables survive a reload.

A new ruleset is validated with ``nft -c -f`` before it is installed, loaded atomically,
and kept only if a new SSH login works afterwards (``apply.guard``); otherwise the previous
table is restored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.facts import Fact, SSHSession
from apply.guard import Guard, guarded_change
from apply.runner import ApplyError, Command, Put
from settings.base import ROLE_SOURCE, PortRule, ProtocolRule
from settings.model import Settings

TEMPLATES = Path(__file__).parent / "templates"


TABLE = "hvsuite_filter"
INCLUDE_DIR = "/etc/nftables.d"
RULES_FILE = f"{INCLUDE_DIR}/10-hvsuite-filter.nft"
MAIN_CONFIG = "/etc/nftables.conf"
_DIGEST = re.compile(r'comment "hvsuite ([0-9a-f]{16})"')


Peers = Mapping[str, Sequence[str]]


def rule_sources(rule: PortRule | ProtocolRule, admins: list[str], peers: Peers) -> list[str] | None:
    """The CIDRs a declared port or protocol is open to; None means everyone ("world")."""
    if "world" in rule.sources:
        return None
    cidrs: list[str] = []
    for source in rule.sources:
        if source == "admin":
            cidrs.extend(admins)
        elif source.startswith(ROLE_SOURCE):
            # The inventory's hosts holding the role (none: the rule admits nobody yet).
            holders = peers.get(source.removeprefix(ROLE_SOURCE), ())
            cidrs.extend(str(ipaddress.ip_network(address)) for address in holders)
        else:
            cidrs.append(source)
    return sorted(set(cidrs), key=lambda c: (ipaddress.ip_network(c).version, c))


def _accept(match: str, sources: list[str] | None, note: str) -> list[str]:
    """``match`` accepted from ``sources``: one nft rule line per address family."""
    if sources is None:
        return [f"{match} accept {note}"]
    lines = []
    for family, version in (("ip", 4), ("ip6", 6)):
        cidrs = [c for c in sources if ipaddress.ip_network(c).version == version]
        if cidrs:
            lines.append(f"{family} saddr {{ {', '.join(cidrs)} }} {match} accept {note}")
    return lines


def _nft_rules(
    declared: Sequence[PortRule | ProtocolRule], match: str, admins: list[str], peers: Peers | None
) -> list[str]:
    """One nft rule line per declared rule and address family; ``match`` is formatted with
    the rule's fields. A rule open to 'admin' needs admin_sources: refused before any change."""
    lines: list[str] = []
    for rule in declared:
        if "admin" in rule.sources and not admins:
            raise ApplyError(
                f"{rule.name!r} ({rule.team}) is open to 'admin' but firewall.admin_sources is "
                'empty: set it to the operator\'s CIDRs (for example admin_sources = ["203.0.113.0/24"])'
            )
        note = f'comment "{rule.name} ({rule.team})"'
        lines += _accept(match.format_map(dict(rule)), rule_sources(rule, admins, peers or {}), note)
    return lines


def port_rules(settings: Settings, admins: list[str], peers: Peers | None = None) -> list[str]:
    """One nft rule line per declared port and address family."""
    ports = sorted(settings.ports, key=lambda r: (r.port, r.proto, r.name))
    return _nft_rules(ports, "{proto} dport {port}", admins, peers)


def protocol_rules(settings: Settings, admins: list[str], peers: Peers | None = None) -> list[str]:
    """One nft rule line per declared protocol and address family."""
    protocols = sorted(settings.protocols, key=lambda r: (r.protocol, r.name))
    return _nft_rules(protocols, "meta l4proto {protocol}", admins, peers)


def render(settings: Settings, admins: list[str], peers: Peers | None = None) -> str:
    """The rules file; its table carries a digest of its own rules so the live table can be
    compared with the file without parsing nft's listing."""
    context = {
        "table": TABLE,
        "rules": port_rules(settings, admins, peers),
        "protocol_rules": protocol_rules(settings, admins, peers),
    }
    body = ops.render(TEMPLATES / "nftables-hvsuite.nft.j2", {**context, "digest_comment": "hvsuite"})
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return ops.render(
        TEMPLATES / "nftables-hvsuite.nft.j2", {**context, "digest_comment": f"hvsuite {digest}"}
    )


def render_main() -> str:
    return ops.render(TEMPLATES / "nftables.conf.j2", {"include_dir": INCLUDE_DIR})


def digest_of(text: str) -> str | None:
    match = _DIGEST.search(text)
    return match.group(1) if match else None


def allowed_ports(
    settings: Settings, admins: list[str], address: str, proto: str = "tcp", peers: Peers | None = None
) -> set[int]:
    """Ports of ``proto`` the firewall lets ``address`` reach."""
    ip = ipaddress.ip_address(address)
    allowed = set()
    for rule in settings.ports:
        if rule.proto != proto:
            continue
        sources = rule_sources(rule, admins, peers or {})
        if sources is None or any(ip in ipaddress.ip_network(cidr) for cidr in sources):
            allowed.add(rule.port)
    return allowed


@dataclass(frozen=True)
class LiveTableDigest(Fact[str | None]):
    """Digest comment of the live suite table; None when the table (or nft) is absent."""

    @property
    def command(self) -> str:
        return f"if command -v nft >/dev/null; then nft list table inet {TABLE} 2>/dev/null || true; fi"

    def parse(self, output: str) -> str | None:
        return digest_of(output)


@dataclass(frozen=True)
class SourceAddress(Fact[str]):
    """The address this host's packets to ``destination`` leave from: what a firewall on
    ``destination`` sees as their source."""

    destination: str

    @property
    def command(self) -> str:
        return f"ip -o route get {shlex.quote(self.destination)}"

    def parse(self, output: str) -> str:
        match = re.search(r"\bsrc (\S+)", output)
        if match is None:
            raise ValueError(f"no source address in {output.strip()!r}")
        return match.group(1)


@step("Firewall")
def apply(ctx: Context) -> None:
    """Install nftables, load the derived ruleset under a lock-out guard, enable at boot."""
    host, settings = ctx.host, ctx.settings
    admins = list(settings.firewall.admin_sources)
    rules_text = render(settings, admins, ctx.peers)
    # netbase: /etc/protocols, where nft resolves the names of declared IP protocols (vrrp, ...).
    ops.packages(host, ["nftables", "netbase"])
    op = f"firewall {RULES_FILE}"
    if host.mode == "verify":
        host.unchanged(op, "verify-only")
        return
    session = host.fact(SSHSession())
    # The port this very session came in on: the one a new login must still reach.
    controller, ssh_port = session.client, session.port
    if ssh_port not in allowed_ports(settings, admins, controller, peers=ctx.peers):
        raise ApplyError(
            f"[{host.name}] the declared ports would not let the controller ({controller}) reach SSH port "
            f"{ssh_port}: declare it in [[ports]] open to 'world', 'admin' or a CIDR holding {controller}"
        )
    rules_stat, current_rules = ops.file_state(host, RULES_FILE)
    main_stat, current_main = ops.file_state(host, MAIN_CONFIG)
    live = host.fact(LiveTableDigest())
    main_text = render_main()
    commands: list[Command] = []
    diffs = []
    if current_rules != rules_text.encode():
        commands.append(f"install -d -m 0755 {INCLUDE_DIR}")
        commands.append(Put(RULES_FILE, rules_text.encode(), "0644", validate="nft -c -f {path}"))
        diffs.append(ops.unified_diff(RULES_FILE, current_rules, rules_text.encode()))
    if current_main != main_text.encode():
        commands.append(Put(MAIN_CONFIG, main_text.encode(), "0755", validate="nft -c -f {path}"))
        diffs.append(ops.unified_diff(MAIN_CONFIG, current_main, main_text.encode()))
    if commands or live != digest_of(rules_text):
        commands.append(f"nft -f {RULES_FILE}")
    # Same text with another owner or mode: corrected without reloading the ruleset.
    metadata: list[Command] = []
    if current_rules == rules_text.encode():
        metadata += ops.metadata_commands(RULES_FILE, rules_stat, mode="0644")
    if current_main == main_text.encode():
        metadata += ops.metadata_commands(MAIN_CONFIG, main_stat, mode="0755")
    if commands:
        commands += metadata
        saved = f"/run/hvsuite/rollback/firewall/live-{TABLE}.nft"
        guard = Guard(
            "firewall",
            files=(RULES_FILE, MAIN_CONFIG),
            save=(f"nft list table inet {TABLE} > {saved} 2>/dev/null || rm -f {saved}",),
            restore=(
                f"nft delete table inet {TABLE} 2>/dev/null; if [ -s {saved} ]; then nft -f {saved}; fi",
            ),
            seconds=settings.alpha.guard_seconds,
        )
        guarded_change(host, op, commands, guard, diff="".join(diffs) or None, lock="firewall")
    else:
        # Owner and mode cannot cut anyone off: no guard needed.
        host.execute(op, metadata, lock="firewall")
    # Boot loads /etc/nftables.conf; starting the oneshot now re-loads the same files.
    ops.service(host, "nftables.service", enabled=True, running=True)


def list_ruleset_command() -> str:
    return f"nft list table inet {shlex.quote(TABLE)}"
