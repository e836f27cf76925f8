"""From the config's inventory (``[[hosts]]``) and ``--target`` to a reachable fleet.

Each team names the roles it works on (phases/plan.toml). A run resolves only the hosts
holding a role one of its teams needs: scratch servers are created (in parallel), ssh hosts
are logged in to with their host keys checked. A needed role that no host holds stops the
run before any change, naming the role and the config key to fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from settings.base import EffectiveProfile, Role
from settings.model import HostSettings, Settings
from targets import Target, TargetError, scratch
from targets.spec import ScratchSpec, SSHSpec, parse_target
from transport.hostkeys import HostKeyError
from transport.ssh import wait_for_ssh


@dataclass(frozen=True)
class PlannedHost:
    """One inventory host as this run will reach it."""

    name: str
    roles: tuple[str, ...]
    spec: ScratchSpec | SSHSpec
    # False: never logged in to (HostSettings.login); only its address is used.
    login: bool = True


@dataclass(frozen=True)
class Fleet:
    """The resolved hosts of a run, asked for by role."""

    members: tuple[Target, ...]
    # Where the inventory comes from, for messages ("settings/scratch.toml").
    source: str = "the config"

    def with_role(self, role: str) -> list[Target]:
        return [target for target in self.members if role in target.roles]

    def one(self, role: str) -> Target:
        found = self.with_role(role)
        if len(found) != 1:
            held = ", ".join(target.name for target in found) or "no host"
            raise TargetError(
                f"role {role!r} is held by {held} in this run; exactly one is needed. "
                f"Fix: give the role to one host under [[hosts]] in {self.source}"
            )
        return found[0]

    def peers(self) -> dict[str, tuple[str, ...]]:
        roles = sorted({role for target in self.members for role in target.roles})
        return {role: tuple(t.address for t in self.with_role(role)) for role in roles}

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "members": [t.to_dict() for t in self.members]})

    @classmethod
    def from_json(cls, text: str) -> Fleet:
        data = json.loads(text)
        return cls(tuple(Target.from_dict(member) for member in data["members"]), data["source"])


def plan_hosts(settings: Settings, cli_target: str | None) -> list[PlannedHost]:
    """The inventory after ``--target``: ``scratch`` / ``scratch:FLEET`` makes every host a
    scratch server of that fleet; an ssh URL or alias replaces the primary host."""
    fleet = settings.scratch.name
    override: ScratchSpec | SSHSpec | None = None
    if cli_target:
        override = _parse(settings, cli_target, option="--target")
        if isinstance(override, ScratchSpec):
            fleet = override.name
    planned = []
    for host in settings.hosts:
        spec: ScratchSpec | SSHSpec
        if isinstance(override, ScratchSpec) or (override is None and host.ssh is None):
            spec = ScratchSpec(f"{fleet}-{host.name}")
        elif isinstance(override, SSHSpec) and Role.PRIMARY in host.roles:
            spec = override
        elif host.ssh is None:
            spec = ScratchSpec(f"{fleet}-{host.name}")
        else:
            spec = _parse(settings, host.ssh, option=f"hosts[{host.name}].ssh")
            if isinstance(spec, ScratchSpec):
                raise TargetError(
                    f"hosts[{host.name}].ssh = {host.ssh!r}: write an ssh URL or alias, or leave ssh unset "
                    "for a scratch server"
                )
        roles = tuple(str(role) for role in host.roles)
        planned.append(
            PlannedHost(_name(host, spec), roles, spec, login=host.login or isinstance(spec, ScratchSpec))
        )
    real = [h.name for h in planned if isinstance(h.spec, SSHSpec) and Role.PRIMARY in h.roles]
    local = [h.name for h in planned if isinstance(h.spec, ScratchSpec)]
    if real and local:
        # A local container cannot stand in for a second machine of a real deployment: the
        # real host would see the controller's own address (probes, bans) instead.
        raise TargetError(
            f"the primary host {real[0]} is a real server, but {', '.join(local)} would be local "
            "scratch servers. Fix: name those hosts' machines with ssh = URL or alias under "
            "[[hosts]] in a config of your own (see settings/hetzner.example.toml)"
        )
    return planned


def _parse(settings: Settings, text: str, *, option: str) -> ScratchSpec | SSHSpec:
    try:
        return parse_target(
            text,
            default_scratch=settings.scratch.name,
            default_user=settings.ssh.user,
            default_port=settings.ssh.port,
            ssh_config=settings.ssh.config_file,
        )
    except TargetError as exc:
        raise TargetError(f"{option}: {exc}") from None


def _name(host: HostSettings, spec: ScratchSpec | SSHSpec) -> str:
    return spec.name if isinstance(spec, ScratchSpec) else host.name


def effective_profile(settings: Settings, hosts: Sequence[PlannedHost]) -> EffectiveProfile:
    """The config's profile when it names one; otherwise "scratch" when the primary host (or,
    without one, every host) is a scratch server, and "production" when it is a real server,
    so that a real server never inherits scratch's waivers."""
    if settings.target.profile is not None:
        return settings.effective_profile(settings.target.profile)
    primary = [host for host in hosts if Role.PRIMARY in host.roles] or list(hosts)
    wanted = "scratch" if primary and all(isinstance(h.spec, ScratchSpec) for h in primary) else "production"
    if wanted not in settings.profiles:
        raise TargetError(f"profile {wanted!r} is not defined in [profiles]; set target.profile")
    return settings.effective_profile(wanted)


def missing_roles(
    hosts: Sequence[PlannedHost], team_roles: Mapping[str, Iterable[str]], source: str
) -> list[str]:
    """One line per role a team needs that no host holds, naming the config key."""
    held = {role for host in hosts for role in host.roles}
    problems = []
    for team, roles in team_roles.items():
        for role in roles:
            if role not in held:
                problems.append(
                    f"Team {team} needs a host with role {role!r}, and the inventory in {source} has none. "
                    f'Fix: add it under [[hosts]], e.g. {{ name = "{role}1", roles = ["{role}"] }} '
                    "(with ssh = URL or alias for a real server), or add the role to an existing host"
                )
    return problems


def resolve_fleet(
    settings: Settings,
    hosts: Sequence[PlannedHost],
    roles: Iterable[str],
    *,
    source: str,
    rebuild: bool = False,
) -> tuple[Fleet, list[str]]:
    """Reach every host holding one of ``roles`` (scratch servers created in parallel, ssh
    hosts logged in to); returns the fleet and one summary line per host."""
    wanted = set(roles)
    chosen = [host for host in hosts if wanted & set(host.roles)]
    servers = {host.name: host.roles for host in chosen if isinstance(host.spec, ScratchSpec)}
    lines: list[str] = []
    resolved: dict[str, Target] = {}
    if servers:
        for name, (target, report) in scratch.create_fleet(
            servers, settings.scratch, rebuild=rebuild
        ).items():
            resolved[name] = target
            what = "created" if report.created else "reused"
            image = f"image built in {report.image_seconds:.1f} s, " if report.image_built else ""
            lines.append(
                f"scratch server {target} [{', '.join(target.roles)}] {what}: {image}"
                f"ssh ready in {report.ready_seconds:.2f} s"
            )
    remote = [host for host in chosen if isinstance(host.spec, SSHSpec)]
    with ThreadPoolExecutor(max_workers=max(1, len(remote))) as pool:
        for target in pool.map(lambda host: resolve_ssh(settings, host), remote):
            resolved[target.name] = target
            lines.append(
                f"ssh host {target} [{', '.join(target.roles)}]: {target.os}, kernel {target.kernel}"
            )
    return Fleet(tuple(resolved[host.name] for host in chosen), source), lines


def resolve_ssh(settings: Settings, host: PlannedHost) -> Target:
    spec = host.spec
    assert isinstance(spec, SSHSpec)
    if not host.login:
        # Never logged in to: no key, host key or facts of its own are read here.
        key_file = Path(settings.ssh.key or spec.key_file or "/dev/null").expanduser()
        return Target(host.name, spec.host, spec.port, spec.user, key_file, host.roles, "ssh")
    key = settings.ssh.key.expanduser() if settings.ssh.key else spec.key_file
    if key is None:
        raise TargetError(
            f"host {host.name} ({spec.label}): no SSH key. Fix: set ssh.key in the config, or IdentityFile "
            f"for Host {spec.label} in {settings.ssh.config_file}"
        )
    key = Path(key).expanduser()
    if not key.is_file():
        raise TargetError(f"host {host.name}: SSH key {key} does not exist; fix ssh.key or IdentityFile")
    files = known_hosts_files(settings, spec)
    record_to = None if settings.ssh.strict_host_keys else files[0]
    target = Target(
        name=host.name,
        address=spec.host,
        port=spec.port,
        user=spec.user,
        key_file=key,
        roles=host.roles,
        kind="ssh",
        known_hosts=tuple(str(path) for path in files),
        record_to=str(record_to) if record_to else None,
    )
    timeout = settings.ssh.connect_timeout
    try:
        # A refused port will not start answering: fail at once instead of waiting it out.
        _waited, os_name, kernel = wait_for_ssh(target.endpoint, timeout=timeout, retry_refused=False)
    except HostKeyError as exc:
        raise TargetError(f"host {host.name} ({spec.label}): {exc}") from None
    except ConnectionRefusedError as exc:
        raise TargetError(
            f"host {host.name} ({spec.user}@{spec.host}:{spec.port}) refused the connection: nothing "
            f"listens on port {spec.port}. Fix: check the address and port (ssh.port, or Port in the "
            "ssh config), and that sshd runs"
        ) from exc
    except TimeoutError as exc:
        raise TargetError(
            f"host {host.name} ({spec.user}@{spec.host}:{spec.port}) did not accept a login with key "
            f"{key} within {timeout:.0f} s: {exc}"
        ) from exc
    return Target(**{**target.to_dict(), "key_file": key, "os": os_name, "kernel": kernel})


def known_hosts_files(settings: Settings, spec: SSHSpec) -> tuple[Path, ...]:
    """ssh.known_hosts (where an accepted key is recorded), then the alias' UserKnownHostsFile."""
    files = [settings.ssh.known_hosts.expanduser(), *spec.known_hosts]
    return tuple(dict.fromkeys(files))
