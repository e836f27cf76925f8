"""The suite's one validated configuration: targets, profiles and waivers, the inventory,
artifact pins, declared ports, and each team's own section.

The root (`RootSettings`) holds what every run needs; each team declares its section in its
own package (``steps/<team>/settings.py``) and names it in ``phases/plan.toml``, and
`compose` adds it here. Every section has defaults that build the embedded scratch target;
an operator's file (`settings/hetzner.example.toml`) overrides what differs. Nothing else in
the suite hard-codes versions, ports, CIDRs or tenants.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, create_model, field_validator, model_validator

from settings.base import (
    CIDR,
    ROLE_SOURCE,
    ArtifactPin,
    EffectiveProfile,
    PortRule,
    Profile,
    ProtocolRule,
    Role,
    Strict,
    TeamSettings,
    Waiver,
)

DEFAULT_PLAN = Path(__file__).resolve().parent.parent / "phases" / "plan.toml"


class TargetSettings(Strict):
    # Waivers in force. Left unset, a run whose primary host is a scratch server uses
    # "scratch", one whose primary is an ssh host "production" (waives nothing).
    profile: str | None = None


class HostSettings(Strict):
    """One host of the inventory and the roles it holds (one host may hold several)."""

    # Scratch servers are named "<scratch.name>-<name>"; an ssh host keeps this name in logs.
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    roles: list[Role] = Field(min_length=1)
    # How to reach it: ssh://user@host[:port] or an alias from ~/.ssh/config. Unset: a local
    # scratch server the suite creates on its podman network.
    ssh: str | None = None
    # False: the suite never opens a shell there (an SFTP-only Hetzner Storage Box): the run
    # knows its address, and the team that uses it reaches it by its own protocol.
    login: bool = True

    @field_validator("roles")
    @classmethod
    def _unique_roles(cls, roles: list[Role]) -> list[Role]:
        if len(set(roles)) != len(roles):
            raise ValueError(f"roles {', '.join(roles)} name a role twice")
        return roles

    @model_validator(mode="after")
    def _login_needs_ssh(self) -> HostSettings:
        if not self.login and self.ssh is None:
            raise ValueError(
                f"hosts[{self.name}].login = false, but it has no ssh URL: a scratch server is always "
                "logged in to. Fix: give its ssh = URL, or drop login = false"
            )
        return self


class SSHSettings(Strict):
    user: str = "root"
    # Private key for ssh targets; scratch servers get a key the suite generates.
    key: Path | None = None
    port: int = Field(22, ge=1, le=65535)
    config_file: Path = Path("~/.ssh/config")
    connect_timeout: float = Field(10.0, gt=0)
    # Host keys of ssh targets are checked against this file (plus UserKnownHostsFile of an
    # ssh config alias). strict_host_keys = false accepts and records an unknown host's key on
    # first use (OpenSSH's accept-new); a changed key is refused either way.
    known_hosts: Path = Path("~/.ssh/known_hosts")
    strict_host_keys: bool = True


class ScratchSettings(Strict):
    name: str = Field("hvs-scratch", pattern=r"^[a-z][a-z0-9-]{1,40}$")
    network: str = Field("hvsuite", pattern=r"^[a-z][a-z0-9-]{1,40}$")
    subnet: CIDR = "10.231.0.0/24"
    # Addresses of the subnet never given to a server (the load balancer's pool lives here).
    keep_free: list[CIDR] = []
    image: str = "localhost/hvsuite-scratch:bookworm"
    suite: str = "bookworm"
    mirror: str = Field("http://deb.debian.org/debian", pattern=r"^https?://")
    # Bound on create-to-SSH-ready (about 1 s is normal; a cold image build is not counted).
    ready_timeout: float = Field(90.0, gt=0, le=1800)


class FirewallSettings(Strict):
    # Where the operator (and the suite's controller) reach the hosts from: the sources of
    # every port declared "admin". Required as soon as an "admin" port is declared.
    admin_sources: list[CIDR] = []


class SignalSettings(Strict):
    # Optional chat webhook (Slack/Mattermost/Discord-compatible JSON {"text": ...}).
    webhook_url: str | None = Field(None, pattern=r"^https?://")
    timeout: float = Field(5.0, gt=0, le=60)


class RootSettings(Strict):
    """What every run needs whatever its teams: the target, the inventory, artifact pins, the
    declared ports and the firewall's admin sources, completion signals. The teams' own
    sections are added by `compose`."""

    target: TargetSettings = TargetSettings()
    ssh: SSHSettings = SSHSettings()
    scratch: ScratchSettings = ScratchSettings()
    profiles: dict[str, Profile] = {
        # Exactly what a podman scratch server on this kind of machine cannot provide.
        "scratch": Profile(
            waivers=frozenset(
                {
                    Waiver.KVM,
                    Waiver.DEVMAPPER,
                    Waiver.UPSTREAM_ARTIFACTS,
                    Waiver.NETPOL_ENFORCEMENT,
                    Waiver.CSI_SNAPSHOTS,
                    Waiver.HOST_KERNEL,
                }
            ),
            namespaced_sysctls_only=True,
            restrict_oom_score_adj=True,
        ),
        "production": Profile(),
    }
    # The inventory: the hosts and the roles they hold.
    hosts: list[HostSettings] = []
    artifacts: dict[str, ArtifactPin] = {}
    # Every port a team opens, with who may reach it; the firewall is derived from these.
    ports: list[PortRule] = []
    # IP protocols other than TCP and UDP a team's hosts accept, with who may send them.
    protocols: list[ProtocolRule] = []
    firewall: FirewallSettings = FirewallSettings()
    signals: SignalSettings = SignalSettings()

    @field_validator("ports")
    @classmethod
    def _distinct_ports(cls, ports: list[PortRule]) -> list[PortRule]:
        # A field validator, so a clash is reported together with every other problem.
        problems = []
        seen: dict[tuple[int, str], str] = {}
        names: dict[tuple[str, str], int] = {}
        for rule in ports:
            key = (rule.port, rule.proto)
            if key in seen:
                problems.append(
                    f"{rule.port}/{rule.proto} is declared by both {seen[key]!r} and {rule.name!r}; "
                    "give one of them another port"
                )
            seen.setdefault(key, rule.name)
            if (rule.team, rule.name) in names:
                problems.append(f"team {rule.team} declares the port name {rule.name!r} twice")
            names[(rule.team, rule.name)] = rule.port
        if problems:
            raise ValueError("; ".join(problems))
        return ports

    @field_validator("hosts")
    @classmethod
    def _inventory(cls, hosts: list[HostSettings]) -> list[HostSettings]:
        problems = []
        names = [host.name for host in hosts]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"host name {name!r} is used twice")
        primary = [host.name for host in hosts if Role.PRIMARY in host.roles]
        if len(primary) > 1:
            problems.append(
                f"role 'primary' is held by {', '.join(primary)}; the hypervisor host is one server "
                "(more nodes take the roles control-plane and worker)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return hosts

    @model_validator(mode="after")
    def _consistent(self) -> RootSettings:
        if self.target.profile is not None and self.target.profile not in self.profiles:
            known = ", ".join(sorted(self.profiles))
            raise ValueError(f"target.profile {self.target.profile!r} is not defined; use one of: {known}")
        declared = [*self.ports, *self.protocols]
        if any("admin" in rule.sources for rule in declared) and not self.firewall.admin_sources:
            admin = ", ".join(rule.name for rule in declared if "admin" in rule.sources)
            raise ValueError(
                f"firewall.admin_sources is empty, but ports {admin} are admin-only: set it to the "
                'operator\'s CIDRs, for example admin_sources = ["203.0.113.0/24"]'
            )
        problems = [line for section in self.team_sections() for line in section.problems_with(self)]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def source_roles(self) -> set[str]:
        """The roles the declared ports and protocols name as sources ("role:<role>")."""
        return {
            source.removeprefix(ROLE_SOURCE)
            for rule in [*self.ports, *self.protocols]
            for source in rule.sources
            if source.startswith(ROLE_SOURCE)
        }

    def team_sections(self) -> list[TeamSettings]:
        """The teams' own sections of this config, in plan order."""
        return [value for value in dict(self).values() if isinstance(value, TeamSettings)]

    @classmethod
    def team_section_classes(cls) -> list[type[TeamSettings]]:
        """The classes of the teams' sections this model was composed of, in plan order."""
        return [
            field.annotation
            for field in cls.model_fields.values()
            if isinstance(field.annotation, type) and issubclass(field.annotation, TeamSettings)
        ]

    def effective_profile(self, name: str) -> EffectiveProfile:
        """The named profile as the one object a run passes around."""
        profile = self.profiles[name]
        return EffectiveProfile(
            name, profile.waivers, profile.namespaced_sysctls_only, profile.restrict_oom_score_adj
        )

    def hosts_with(self, role: Role | str) -> list[HostSettings]:
        return [host for host in self.hosts if Role(role) in host.roles]

    def ports_of(self, team: str) -> list[PortRule]:
        return [rule for rule in self.ports if rule.team == team]

    def port(self, team: str, name: str) -> int:
        """The port `team` declared under `name`; a clear error naming the fix if it is missing."""
        for rule in self.ports_of(team):
            if rule.name == name:
                return rule.port
        raise ValueError(
            f"ports: no rule named {name!r} for team {team}; declare it in [[ports]], e.g. "
            f'{{ name = "{name}", team = "{team}", port = N, sources = ["admin"] }}'
        )


def team_settings_classes(plan_file: Path = DEFAULT_PLAN) -> list[type[TeamSettings]]:
    """The section classes the plan's teams declare (``settings = "module:Class"``), in plan
    order. The plan names them, so adding a team edits no file of this package."""
    with open(plan_file, "rb") as handle:
        plan = tomllib.load(handle)
    classes: list[type[TeamSettings]] = []
    for team in plan.get("team", []):
        reference = team.get("settings")
        if reference is None:
            continue
        module_name, _, attribute = reference.partition(":")
        section = getattr(importlib.import_module(module_name), attribute)
        if not (isinstance(section, type) and issubclass(section, TeamSettings)):
            raise TypeError(f"{plan_file}: team {team['name']}: settings {reference} is not a TeamSettings")
        classes.append(section)
    return classes


def compose(plan_file: Path = DEFAULT_PLAN) -> type[RootSettings]:
    """The root config model: `RootSettings` plus one field per team section of the plan."""
    fields: dict[str, Any] = {}
    for section in team_settings_classes(plan_file):
        if section.section in fields or section.section in RootSettings.model_fields:
            raise TypeError(f"{plan_file}: the section [{section.section}] of {section.__name__} is taken")
        fields[section.section] = (section, section())
    return create_model("Settings", __base__=RootSettings, __module__=__name__, **fields)


# The config model of this suite's plan (every `Settings` in the suite is this one class).
Settings = compose()
