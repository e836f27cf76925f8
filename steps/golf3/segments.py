"""Team Golf-3: a network segment per tenant on the host, isolated from the other tenants.

Each tenant gets a Linux bridge of its own (``<golf3.bridge_prefix><tenant>``) holding the
first address of its subnet, built by a oneshot unit of the team's own (so it is there again
after a boot) and rebuilt when its unit file changes or the live bridge drifts from it.

Isolation is one nftables table of the team's own, ``inet hvsuite_golf3``, in its own file
under Alpha's /etc/nftables.d (Alpha's /etc/nftables.conf includes every file there, so the
table is loaded at boot with Alpha's): a forward chain that drops what the host would route
from one tenant's bridge to another's, counted by the named counter ``tenant_crossings``. The
segments meet at layer 3 in the host's forward path, where the inet family sees every packet
without br_netfilter (a host-wide setting). The file carries a digest of its rules, compared
with the live table's, and is validated with ``nft -c -f`` before it replaces the live one;
loading it replaces this table alone (never a flush of the ruleset, never Alpha's table). It
cannot cut anyone off (it matches the tenants' bridges only), so no lock-out guard is needed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.facts import Fact
from steps.alpha.firewall import INCLUDE_DIR
from steps.golf3.settings import Golf3Settings, TenantSettings
from steps.golf3.slices import UNIT_DIR, remove_stale_units, verify_unit

TEMPLATES = Path(__file__).parent / "templates"
TABLE = "hvsuite_golf3"
COUNTER = "tenant_crossings"
RULES_FILE = f"{INCLUDE_DIR}/20-hvsuite-golf3.nft"
UNIT_PREFIX = "hvsuite-golf3-segment-"
PACKAGES = ["iproute2", "iputils-ping"]
_DIGEST = re.compile(r'comment "hvsuite golf3 ([0-9a-f]{16})"')


def segment_unit(tenant: TenantSettings) -> str:
    return f"{UNIT_PREFIX}{tenant.name}.service"


def address(tenant: TenantSettings) -> str:
    """The bridge's address with its prefix (``10.248.1.1/24``)."""
    return f"{tenant.gateway}/{tenant.prefixlen}"


def render_segment(golf3: Golf3Settings, tenant: TenantSettings) -> str:
    """Pure: the unit that builds the tenant's bridge."""
    return ops.render(
        TEMPLATES / "segment.service.j2",
        {
            "tenant": tenant.name,
            "bridge": golf3.bridge(tenant),
            "subnet": tenant.subnet,
            "address": address(tenant),
            "table": TABLE,
        },
    )


def isolation_rules(golf3: Golf3Settings) -> list[str]:
    """Pure: per tenant, one rule dropping (and counting) what is routed from its bridge to
    any other tenant's."""
    bridges = [golf3.bridge(tenant) for tenant in golf3.tenants]
    rules = []
    for tenant, bridge in zip(golf3.tenants, bridges, strict=True):
        others = [other for other in bridges if other != bridge]
        if others:
            targets = ", ".join(f'"{other}"' for other in others)
            rules.append(
                f'iifname "{bridge}" oifname {{ {targets} }} counter name "{COUNTER}" drop '
                f'comment "from tenant {tenant.name} to another tenant"'
            )
    return rules


def render_table(golf3: Golf3Settings) -> str:
    """Pure: the team's nftables file; its table carries a digest of its own text, so the
    live table can be compared with the file without parsing nft's listing."""
    context = {"table": TABLE, "counter": COUNTER, "rules": isolation_rules(golf3)}
    body = ops.render(TEMPLATES / "nftables-golf3.nft.j2", {**context, "digest_comment": "hvsuite golf3"})
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return ops.render(
        TEMPLATES / "nftables-golf3.nft.j2", {**context, "digest_comment": f"hvsuite golf3 {digest}"}
    )


def digest_of(text: str) -> str | None:
    match = _DIGEST.search(text)
    return match.group(1) if match else None


@dataclass(frozen=True)
class LiveTableDigest(Fact[str | None]):
    """The digest comment of the live team table; None when the table is absent."""

    @property
    def command(self) -> str:
        return f"nft list table inet {TABLE} 2>/dev/null || true"

    def parse(self, output: str) -> str | None:
        return digest_of(output)


@dataclass(frozen=True)
class BridgeLink:
    kind: str
    up: bool
    ipv4: tuple[str, ...]  # "address/prefix", as configured


@dataclass(frozen=True)
class Link(Fact[BridgeLink | None]):
    """An interface's kind, whether it is up, and its IPv4 addresses; None when absent."""

    name: str

    @property
    def command(self) -> str:
        return f"ip -j -d address show dev {shlex.quote(self.name)} 2>/dev/null || true"

    def parse(self, output: str) -> BridgeLink | None:
        links = json.loads(output) if output.strip() else []
        if not links:
            return None
        link = links[0]
        return BridgeLink(
            kind=link.get("linkinfo", {}).get("info_kind", ""),
            up="UP" in link.get("flags", []),
            ipv4=tuple(
                sorted(
                    f"{a['local']}/{a['prefixlen']}"
                    for a in link.get("addr_info", [])
                    if a["family"] == "inet"
                )
            ),
        )


def wanted_link(tenant: TenantSettings) -> BridgeLink:
    return BridgeLink(kind="bridge", up=True, ipv4=(address(tenant),))


@step("Network segments")
def apply(ctx: Context) -> None:
    host, golf3 = ctx.host, ctx.settings.golf3
    ops.packages(host, PACKAGES)
    units = {segment_unit(tenant): tenant for tenant in golf3.tenants}
    written = {
        unit: ops.file(host, f"{UNIT_DIR}/{unit}", render_segment(golf3, tenant), validate=verify_unit(unit))
        for unit, tenant in units.items()
    }
    ops.daemon_reload(host, units=list(units), force=any(r.changed for r in written.values()))
    for unit, tenant in units.items():
        drifted = host.mode != "verify" and host.fact(Link(golf3.bridge(tenant))) != wanted_link(tenant)
        # A changed unit or a drifted bridge: the restart removes the bridge and builds it anew.
        ops.service(host, unit, enabled=True, running=True, restart=written[unit].changed or drifted)
    remove_stale_units(host, set(units), f"{UNIT_PREFIX}*.service")

    text = render_table(golf3)
    written_table = ops.file(host, RULES_FILE, text, validate="nft -c -f {path}", lock="firewall")
    if host.mode == "verify":
        return
    live = host.fact(LiveTableDigest())
    load = [f"nft -f {RULES_FILE}"] if written_table.changed or live != digest_of(text) else []
    host.execute(f"nftables table inet {TABLE}", load, lock="firewall")
