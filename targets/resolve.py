"""From settings and `--target` to a reachable Target (creating scratch servers as needed)."""

from __future__ import annotations

from pathlib import Path

from settings.model import Settings
from steps.runner import HostKeyError
from targets import Target, TargetError, scratch
from targets.spec import ScratchSpec, SSHSpec, parse_target
from targets.ssh import wait_for_ssh

PROBE_SUFFIX = "-probe"


def select_spec(settings: Settings, cli_target: str | None) -> ScratchSpec | SSHSpec:
    """`--target` wins over the config's [target] section."""
    if cli_target:
        text = cli_target
    elif settings.target.kind == "ssh":
        text = settings.target.url or ""
    else:
        text = "scratch"
    return parse_target(
        text,
        default_scratch=settings.scratch.name,
        default_user=settings.ssh.user,
        default_port=settings.ssh.port,
        ssh_config=settings.ssh.config_file,
    )


def effective_profile(settings: Settings, spec: ScratchSpec | SSHSpec) -> str:
    """The config's profile when it names one; otherwise "scratch" for a scratch target and
    "production" for an ssh target, so that a real server never inherits scratch's waivers."""
    if "profile" in settings.target.model_fields_set:
        return settings.target.profile
    wanted = "scratch" if isinstance(spec, ScratchSpec) else "production"
    if wanted not in settings.profiles:
        raise TargetError(f"profile {wanted!r} is not defined in [profiles]; set target.profile")
    return wanted


def resolve(
    settings: Settings, spec: ScratchSpec | SSHSpec, *, profile: str, rebuild: bool = False
) -> tuple[Target, str]:
    """A reachable target and a line saying what it took (for the run's header)."""
    if isinstance(spec, ScratchSpec):
        target, report = scratch.create(
            spec.name,
            settings.scratch,
            profile=profile,
            rebuild=rebuild,
            ready_timeout=settings.scratch.ready_timeout,
        )
        what = "created" if report.created else "reused"
        image = f"image built in {report.image_seconds:.1f} s, " if report.image_built else ""
        return target, f"scratch server {target} {what}: {image}ssh ready in {report.ready_seconds:.2f} s"
    target = resolve_ssh(settings, spec, profile=profile)
    return target, f"ssh target {target}: {target.os}, kernel {target.kernel}"


def resolve_ssh(settings: Settings, spec: SSHSpec, *, profile: str) -> Target:
    key = settings.ssh.key.expanduser() if settings.ssh.key else spec.key_file
    if key is None:
        raise TargetError(
            f"target {spec.label}: no SSH key. Fix: set ssh.key in the config, or IdentityFile for "
            f"Host {spec.label} in {settings.ssh.config_file}"
        )
    key = Path(key).expanduser()
    if not key.is_file():
        raise TargetError(f"target {spec.label}: SSH key {key} does not exist; fix ssh.key or IdentityFile")
    timeout = settings.ssh.connect_timeout
    known_hosts = known_hosts_files(settings, spec)
    record_to = None if settings.ssh.strict_host_keys else known_hosts[0]
    try:
        _waited, os_name, kernel = wait_for_ssh(
            spec.host,
            spec.port,
            spec.user,
            key,
            timeout=timeout,
            known_hosts=known_hosts,
            record_to=record_to,
        )
    except HostKeyError as exc:
        raise TargetError(f"target {spec.label}: {exc}") from None
    except TimeoutError as exc:
        raise TargetError(
            f"target {spec.label} ({spec.user}@{spec.host}:{spec.port}) did not accept a login with key "
            f"{key} within {timeout:.0f} s: {exc}"
        ) from exc
    return Target(
        name=spec.label,
        address=spec.host,
        port=spec.port,
        user=spec.user,
        key_file=key,
        profile=profile,
        is_scratch=False,
        os=os_name,
        kernel=kernel,
        known_hosts=tuple(str(path) for path in known_hosts),
    )


def known_hosts_files(settings: Settings, spec: SSHSpec) -> tuple[Path, ...]:
    """ssh.known_hosts (where an accepted key is recorded), then the alias' UserKnownHostsFile."""
    files = [settings.ssh.known_hosts.expanduser(), *spec.known_hosts]
    return tuple(dict.fromkeys(files))


def resolve_probe(settings: Settings, target: Target, *, rebuild: bool = False) -> Target | None:
    """The second host for outside-in checks: on scratch, a second scratch server on the same
    network; on an ssh target, `target.probe` from the config, or None (the controller)."""
    if target.is_scratch:
        name = f"{target.name}{PROBE_SUFFIX}"[:41]
        probe, _report = scratch.create(
            name,
            settings.scratch,
            profile=target.profile,
            rebuild=rebuild,
            ready_timeout=settings.scratch.ready_timeout,
        )
        return probe
    if not settings.target.probe:
        return None
    spec = parse_target(
        settings.target.probe,
        default_scratch=settings.scratch.name,
        default_user=settings.ssh.user,
        default_port=settings.ssh.port,
        ssh_config=settings.ssh.config_file,
    )
    if isinstance(spec, ScratchSpec):
        raise TargetError("target.probe must be an ssh target (ssh://user@host[:port] or an alias)")
    return resolve_ssh(settings, spec, profile=target.profile)
