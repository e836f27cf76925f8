"""SSH hardening: key-only logins, modern cryptography, weak host keys and DH moduli removed.

The managed settings live in one drop-in (``/etc/ssh/sshd_config.d/00-hvsuite-hardening.conf``),
never appended to ``sshd_config``. A new drop-in is checked, validated and swapped: the
candidate is validated with ``sshd -t`` together with the live configuration before it is
moved into place (a syntax error is never installed), the effective values are confirmed
with ``sshd -T``, sshd reloads only on change, and a *new* key login is proven under a
dead man's switch (``steps.guard``) that rolls the drop-in back if it is not.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from settings.model import SSHHardening
from steps import ops
from steps.facts import CommandSucceeds, Fact
from steps.guard import Guard, guarded_change
from steps.runner import ApplyError, Command, Host, OpResult, Put

SSHD_CONFIG = "/etc/ssh/sshd_config"
DROPIN = "/etc/ssh/sshd_config.d/00-hvsuite-hardening.conf"
MODULI = "/etc/ssh/moduli"
# A config for `sshd -t` that reads the candidate first, then the live configuration.
VALIDATION_CONFIG = "/run/hvsuite/sshd-candidate-test.conf"
# Debian and Ubuntu name the unit ssh.service; try-reload-or-restart also covers Ubuntu's
# socket-activated sshd when the service is not running.
RELOAD = "systemctl try-reload-or-restart ssh.service"
MIN_MODULI_BITS = 3071

HOST_KEY_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "ed25519": ("ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com"),
    "rsa": (
        "rsa-sha2-512",
        "rsa-sha2-256",
        "rsa-sha2-512-cert-v01@openssh.com",
        "rsa-sha2-256-cert-v01@openssh.com",
    ),
    "ecdsa": ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"),
}
ALL_HOST_KEY_TYPES = ("dsa", "ecdsa", "ed25519", "rsa")
# The effective configuration for a root login from a documentation address (RFC 5737).
EFFECTIVE = "sshd -T -C user=root,host=hvsuite.invalid,addr=192.0.2.1"


def host_key_path(kind: str) -> str:
    return f"/etc/ssh/ssh_host_{kind}_key"


def host_key_algorithms(ssh: SSHHardening) -> list[str]:
    """Host key signature algorithms of the allowed key types."""
    return [alg for kind in ssh.host_key_types for alg in HOST_KEY_ALGORITHMS[kind]]


def disallowed_host_key_types(ssh: SSHHardening) -> list[str]:
    return sorted(set(ALL_HOST_KEY_TYPES) - set(ssh.host_key_types))


def config_guard(seconds: int = 120) -> Guard:
    """The dead man's switch of a drop-in change: restore the drop-in, reload sshd."""
    return Guard("sshd", files=(DROPIN,), restore=(RELOAD,), seconds=seconds)


def render(ssh: SSHHardening, *, extra: Sequence[str] = ()) -> str:
    """The drop-in's text. ``extra`` lines are appended (site policy such as AllowGroups)."""
    for line in extra:
        if "\n" in line or not line.strip():
            raise ValueError(f"sshd extra line {line!r} must be one non-empty line")
    return ops.render(
        "sshd-hardening.conf.j2",
        {
            "ssh": ssh,
            "permit_root_login": ssh.permit_root_login,
            "host_key_algorithms": host_key_algorithms(ssh),
            "host_keys": [host_key_path(kind) for kind in ssh.host_key_types],
            "extra": list(extra),
        },
    )


def expected_effective(ssh: SSHHardening) -> dict[str, tuple[str, ...]]:
    """Keywords ``sshd -T`` must print once the drop-in is in effect, with the accepted values."""
    root = (ssh.permit_root_login,)
    if ssh.permit_root_login == "prohibit-password":
        # OpenSSH prints the historical spelling.
        root = ("without-password", "prohibit-password")
    return {
        "passwordauthentication": ("no",),
        "kbdinteractiveauthentication": ("no",),
        "pubkeyauthentication": ("yes",),
        "permitrootlogin": root,
        "authenticationmethods": ("publickey",),
        "permitemptypasswords": ("no",),
        "x11forwarding": ("no",),
        "logingracetime": (str(ssh.login_grace_time),),
        "maxauthtries": (str(ssh.max_auth_tries),),
        "clientaliveinterval": (str(ssh.client_alive_interval),),
        "clientalivecountmax": (str(ssh.client_alive_count_max),),
        "kexalgorithms": (",".join(ssh.kex),),
        "ciphers": (",".join(ssh.ciphers),),
        "macs": (",".join(ssh.macs),),
    }


@dataclass(frozen=True)
class EffectiveConfig(Fact[dict[str, str]]):
    """What sshd would apply (``sshd -T``), keyword -> value."""

    @property
    def command(self) -> str:
        return EFFECTIVE

    def parse(self, output: str) -> dict[str, str]:
        return parse_effective(output)


def parse_effective(output: str) -> dict[str, str]:
    """``sshd -T`` output as keyword -> value (multi-valued keywords joined by spaces)."""
    values: dict[str, list[str]] = {}
    for line in output.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            values.setdefault(key.lower(), []).append(value.strip())
    return {key: " ".join(found) for key, found in values.items()}


def effective_mismatches(effective: dict[str, str], ssh: SSHHardening) -> list[str]:
    """Human-readable differences between ``sshd -T`` output and the hardening settings."""
    return [
        f"{key} is {effective.get(key)!r}, expected {' or '.join(map(repr, accepted))}"
        for key, accepted in expected_effective(ssh).items()
        if effective.get(key) not in accepted
    ]


def validate_command() -> str:
    """``Put.validate`` for the drop-in: sshd -t on the candidate read first, then the live config."""
    test_config = shlex.quote(VALIDATION_CONFIG)
    return (
        "mkdir -p -m 0700 /run/hvsuite && "
        f"printf 'Include %s\\nInclude {SSHD_CONFIG}\\n' {{path}} > {test_config}"
        f" && sshd -t -f {test_config}; status=$?; rm -f {test_config}; exit $status"
    )


def effective_check_command(ssh: SSHHardening) -> str:
    """Fails unless the installed configuration yields the hardened values (run before reload)."""
    checks = " && ".join(
        "grep -qxiE " + shlex.quote(f"{key} ({'|'.join(re.escape(value) for value in accepted)})") + ' "$out"'
        for key, accepted in expected_effective(ssh).items()
    )
    return f'out=$(mktemp) && {EFFECTIVE} > "$out" && {{ {checks}; }}; status=$?; rm -f "$out"; exit $status'


def install_config(host: Host, ssh: SSHHardening, text: str, *, guard_seconds: int = 120) -> OpResult:
    """Put ``text`` in place as the drop-in: check, validate (``sshd -t``), swap, confirm
    (``sshd -T``), reload, prove a new login; roll back if any of that fails."""
    op = f"sshd drop-in {DROPIN}"
    if host.mode == "verify":
        return host.unchanged(op, "verify-only")
    current = host.read(DROPIN)
    data = text.encode()
    if current == data:
        return host.unchanged(op, "drop-in already as desired")
    commands: list[Command] = [
        "install -d -m 0755 /etc/ssh/sshd_config.d",
        Put(DROPIN, data, "0644", validate=validate_command()),
        "sshd -t",
        effective_check_command(ssh),
        RELOAD,
    ]
    diff = ops.unified_diff(DROPIN, current, data)
    return guarded_change(host, op, commands, config_guard(guard_seconds), diff=diff)


def refused_install(host: Host, ssh: SSHHardening, text: str, *, guard_seconds: int = 120) -> str:
    """A rollback drill: push a bad drop-in through the real install path on a connection of
    its own (the drill's change is undone, not one of the team's convergence changes) and
    return the ApplyError's message. Raises AssertionError if the drop-in was kept."""
    drill = host.fresh()
    try:
        install_config(drill, ssh, text, guard_seconds=guard_seconds)
    except ApplyError as exc:
        return str(exc)
    finally:
        drill.close()
    raise AssertionError(f"sshd kept the drill's drop-in:\n{text}")


@dataclass(frozen=True)
class HostKeyFiles(Fact[frozenset[str]]):
    """Host key types present as /etc/ssh/ssh_host_<type>_key."""

    @property
    def command(self) -> str:
        return "ls -1 /etc/ssh/ | grep -E '^ssh_host_[a-z0-9]+_key$' || true"

    def parse(self, output: str) -> frozenset[str]:
        return frozenset(line[len("ssh_host_") : -len("_key")] for line in output.split())


@dataclass(frozen=True)
class WeakModuli(Fact[int | None]):
    """Number of DH group-exchange moduli below MIN_MODULI_BITS; None without a moduli file."""

    @property
    def command(self) -> str:
        return (
            f"if [ -f {MODULI} ]; then awk '!/^#/ && NF >= 7 && $5 < {MIN_MODULI_BITS}' {MODULI} | wc -l; fi"
        )

    def parse(self, output: str) -> int | None:
        return int(output.strip()) if output.strip() else None


def host_keys(host: Host, ssh: SSHHardening) -> OpResult:
    """A host key of every allowed type exists (before the drop-in names them)."""
    op = "sshd host keys present: " + ", ".join(ssh.host_key_types)
    if host.mode == "verify":
        return host.unchanged(op, "verify-only")
    present = host.fact(HostKeyFiles())
    commands: list[Command] = [
        f"ssh-keygen -q -t {kind}{' -b 4096' if kind == 'rsa' else ''} -N '' -f {host_key_path(kind)}"
        for kind in ssh.host_key_types
        if kind not in present
    ]
    return host.execute(op, commands, reason="" if commands else "every allowed host key exists")


def weak_host_keys(host: Host, ssh: SSHHardening) -> OpResult:
    """Host keys of types not allowed (DSA, ECDSA) removed, once sshd no longer loads them."""
    op = "sshd weak host keys absent"
    if host.mode == "verify":
        return host.unchanged(op, "verify-only")
    weak = sorted(host.fact(HostKeyFiles()) - set(ssh.host_key_types))
    commands: list[Command] = [f"rm -f -- {host_key_path(kind)} {host_key_path(kind)}.pub" for kind in weak]
    return host.execute(op, commands, reason="" if commands else "no weak host keys")


def moduli(host: Host) -> OpResult:
    """DH group-exchange moduli below 3072 bits removed (dev-sec ssh-hardening)."""
    op = f"sshd moduli >= {MIN_MODULI_BITS + 1} bits"
    if host.mode == "verify":
        return host.unchanged(op, "verify-only")
    weak = host.fact(WeakModuli())
    if not weak:
        return host.unchanged(op, "no weak moduli" if weak == 0 else f"{MODULI} absent")
    keep = f"awk '/^#/ || $5 >= {MIN_MODULI_BITS}' {MODULI}"
    # Refuse to leave an empty moduli file: sshd would then fall back to fixed groups silently.
    return host.execute(
        op,
        [
            f'tmp=$(mktemp {MODULI}.XXXXXX) && {keep} > "$tmp" && '
            f'[ "$(grep -vc \'^#\' "$tmp")" -gt 0 ] && chmod 0644 "$tmp" && mv -f "$tmp" {MODULI}'
        ],
        diff=f"remove {weak} moduli below {MIN_MODULI_BITS + 1} bits from {MODULI}\n",
    )


def include_present(host: Host) -> bool:
    return host.fact(
        CommandSucceeds(
            f"grep -Eiq '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\\.d/\\*\\.conf' {SSHD_CONFIG}"
        )
    )


def apply(
    host: Host, ssh: SSHHardening, *, guard_seconds: int = 120, extra: Iterable[str] = ()
) -> list[OpResult]:
    """Everything of the "SSH hardening" task, in a safe order: allowed host keys exist
    before the drop-in names them; weak ones go only after sshd stopped loading them."""
    if host.mode != "verify" and not include_present(host):
        raise ApplyError(
            f"[{host.name}] {SSHD_CONFIG} has no 'Include /etc/ssh/sshd_config.d/*.conf' line, so the "
            f"hardening drop-in would be ignored; add that line at the top of {SSHD_CONFIG}"
        )
    return [
        host_keys(host, ssh),
        install_config(host, ssh, render(ssh, extra=list(extra)), guard_seconds=guard_seconds),
        weak_host_keys(host, ssh),
        moduli(host),
    ]
