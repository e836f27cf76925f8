"""What every part of the config is made of: strict models, waivers and profiles, roles, CIDRs,
artifact pins, port declarations, and the base of a team's own section."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    # An unknown key is a typo an operator wants to hear about, not a silently ignored line.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Waiver(StrEnum):
    """Capabilities a target profile may declare it cannot have."""

    KVM = "kvm"
    DEVMAPPER = "devmapper"
    UPSTREAM_ARTIFACTS = "upstream-artifacts"
    # A Kubernetes pod network that enforces NetworkPolicy (a CNI such as Calico or Cilium).
    NETPOL_ENFORCEMENT = "netpol-enforcement"
    # CSI volume snapshots (the snapshot controller and a snapshot-capable CSI driver).
    CSI_SNAPSHOTS = "csi-snapshots"
    # Host-wide kernel settings of its own (vm.*, kernel.*, host-wide net.* sysctls, kernel
    # modules); a container shares its host's kernel.
    HOST_KERNEL = "host-kernel"


class Role(StrEnum):
    """What a host of the inventory is for. Teams ask for hosts by role (phases/plan.toml)."""

    # The hypervisor host every single-host team builds (the plan's one server).
    PRIMARY = "primary"
    # A second host for outside-in checks: port scans from a non-admin address, the
    # fail2ban ban drill.
    PROBE = "probe"
    CONTROL_PLANE = "control-plane"
    WORKER = "worker"
    # A backup repository, and a host a backup is restored onto.
    BACKUP = "backup"
    RESTORE = "restore"
    # Central log aggregation.
    LOGS = "logs"
    # The far end of network benchmarks.
    BENCH_PEER = "bench-peer"


def parse_cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR (write it like 203.0.113.0/24 or 2001:db8::/32)") from exc


CIDR = Annotated[str, AfterValidator(parse_cidr)]


class Profile(Strict):
    """What a kind of target cannot provide, and how it must be treated. A check needing a
    waived capability is skipped with the waiver's name; a profile with no waivers runs
    every check."""

    waivers: frozenset[Waiver] = frozenset()
    # Global sysctls (vm.*, kernel.*) change the machine a container-based target shares
    # with its host; such targets keep host tuning to namespaced net.* keys.
    namespaced_sysctls_only: bool = False
    # containerd inside a container-based target lacks CAP_SYS_RESOURCE: runc then fails
    # with "can't get final child's PID from pipe: EOF" unless containers may not lower
    # their OOM score below containerd's.
    restrict_oom_score_adj: bool = False


@dataclass(frozen=True)
class EffectiveProfile:
    """The one profile in force for a run (named in the config, or chosen by the kind of the
    primary host). Steps ask it for capabilities; nothing asks "is this scratch?"."""

    name: str
    waivers: frozenset[Waiver]
    namespaced_sysctls_only: bool
    restrict_oom_score_adj: bool

    def waives(self, capability: Waiver | str) -> bool:
        return Waiver(capability) in self.waivers

    def __str__(self) -> str:
        return self.name


class ArtifactPin(Strict):
    """A download that does not come from the OS package manager."""

    version: str
    url: str = Field(pattern=r"^(https?|file)://")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # Path of the wanted file inside a .tgz/.tar.gz, if the download is an archive.
    member: str | None = None
    # Where the file is installed on the target.
    dest: str
    mode: str = Field("0755", pattern=r"^0[0-7]{3}$")

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower() if isinstance(value, str) else value


ROLE_SOURCE = "role:"


def parse_source(value: str) -> str:
    """Who may reach a declared port or protocol: "world", "admin" (firewall.admin_sources),
    "role:<role>" (the inventory's hosts holding that role, resolved when the firewall is
    applied), or a CIDR."""
    if value in ("world", "admin"):
        return value
    if value.startswith(ROLE_SOURCE):
        role = value.removeprefix(ROLE_SOURCE)
        if role not in {r.value for r in Role}:
            known = ", ".join(ROLE_SOURCE + r.value for r in Role)
            raise ValueError(f"{value!r} names no role (use one of: {known})")
        return value
    return parse_cidr(value)


class PortRule(Strict):
    """One port a team opens. The firewall is derived from these declarations only."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    team: str
    port: int = Field(ge=1, le=65535)
    proto: Literal["tcp", "udp"] = "tcp"
    # "world", "admin", "role:<role>" or CIDRs (see parse_source); [] is no one outside the host.
    sources: list[str] = ["admin"]

    @field_validator("sources")
    @classmethod
    def _sources(cls, values: list[str]) -> list[str]:
        return [parse_source(v) for v in values]


class ProtocolRule(Strict):
    """An IP protocol other than TCP and UDP that a team's hosts accept (VRRP between the
    hosts holding a virtual address, say). The firewall is derived from these too."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    team: str
    # A protocol name nftables knows (/etc/protocols): vrrp, esp, gre, ...
    protocol: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    sources: list[str] = Field(min_length=1)

    @field_validator("protocol")
    @classmethod
    def _not_a_port_protocol(cls, value: str) -> str:
        if value in ("tcp", "udp"):
            raise ValueError(f"{value} is declared by port in [[ports]]")
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, values: list[str]) -> list[str]:
        return [parse_source(v) for v in values]


class TeamSettings(Strict):
    """A team's own section of the config. The team declares it in its package
    (``steps/<team>/settings.py``) and names it in the plan (``settings = "module:Class"``);
    the root config (`settings.model.Settings`) is composed of every declared section."""

    # The config table this section is read from, e.g. "alpha" for [alpha].
    section: ClassVar[str]

    def problems_with(self, config: Any) -> list[str]:
        """Problems this section has with the rest of the config (the composed root, passed
        in after every section validated on its own): one line each, naming the field and
        the fix. Cross-team validation lives with the team that needs it."""
        return []
