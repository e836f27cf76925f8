"""SSH hardening: key-only logins, modern cryptography, weak host keys and DH moduli removed.

The suite owns both files sshd reads: the main ``/etc/ssh/sshd_config`` (rendered from a
template: the Include of the drop-in directory first, then the distribution's non-security
defaults, decided from /etc/os-release and the sftp-server that exists) and the hardening
drop-in ``/etc/ssh/sshd_config.d/00-hvsuite-hardening.conf``. Either one drifting (an edit,
an appended line sshd rejects) is rewritten by the next run and counted as a change.

A change is checked, validated and swapped, main config first: each candidate is validated
with ``sshd -t`` together with exactly what sshd will read after the swap (the other file as
it will be, the other drop-ins as they are), so a syntax error is never installed and a
broken live file never blocks its own repair. The effective values are confirmed with
``sshd -T``, sshd reloads only on change, and a *new* key login is proven under a dead man's
switch (``apply.guard``) that rolls both files back if it is not.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.facts import Fact, OsRelease, SSHSession
from apply.guard import Guard, guarded_change
from apply.runner import ApplyError, Command, Host, OpResult, Put
from steps.alpha import baseline
from steps.alpha.settings import SSHHardening

TEMPLATES = Path(__file__).parent / "templates"


SSHD_CONFIG = "/etc/ssh/sshd_config"
DROPIN_DIR = "/etc/ssh/sshd_config.d"
DROPIN = f"{DROPIN_DIR}/00-hvsuite-hardening.conf"
MODULI = "/etc/ssh/moduli"
# Where the drop-in candidate waits while the main config is validated against it.
STAGED_DROPIN = "/run/hvsuite/sshd-hardening-candidate.conf"
# Where Debian-family and Red Hat-family packages put sftp-server, in the order tried.
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
# Debian and Ubuntu name the unit ssh.service; try-reload-or-restart also covers Ubuntu's
# socket-activated sshd when the service is not running.
RELOAD = "systemctl try-reload-or-restart ssh.service"
MIN_MODULI_BITS = 3071
# The legal banner sshd sends before authentication (written by this step, from alpha.banner).
BANNER = "/etc/issue.net"

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
    """The dead man's switch of an sshd config change: restore the main config and the
    drop-in, reload sshd."""
    return Guard("sshd", files=(SSHD_CONFIG, DROPIN), restore=(RELOAD,), seconds=seconds)


def render(ssh: SSHHardening, *, extra: Sequence[str] = ()) -> str:
    """The drop-in's text. ``extra`` lines are appended (site policy such as AllowGroups)."""
    for line in extra:
        if "\n" in line or not line.strip():
            raise ValueError(f"sshd extra line {line!r} must be one non-empty line")
    return ops.render(
        TEMPLATES / "sshd-hardening.conf.j2",
        {
            "ssh": ssh,
            "permit_root_login": ssh.permit_root_login,
            "host_key_algorithms": host_key_algorithms(ssh),
            "host_keys": [host_key_path(kind) for kind in ssh.host_key_types],
            "banner": BANNER,
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
        "maxsessions": (str(ssh.max_sessions),),
        "tcpkeepalive": ("no",),
        "banner": (BANNER,),
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


def effective_check_command(ssh: SSHHardening) -> str:
    """Fails unless the installed configuration yields the hardened values (run before reload)."""
    checks = " && ".join(
        "grep -qxiE " + shlex.quote(f"{key} ({'|'.join(re.escape(value) for value in accepted)})") + ' "$out"'
        for key, accepted in expected_effective(ssh).items()
    )
    return f'out=$(mktemp) && {EFFECTIVE} > "$out" && {{ {checks}; }}; status=$?; rm -f "$out"; exit $status'


# -- the main config -------------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    """What sshd's main config takes from the distribution's openssh-server package."""

    name: str
    # The package's AcceptEnv (later releases, Debian 13 and Ubuntu 25.10, add COLORTERM NO_COLOR).
    accept_env: str
    # sshd is started from ssh.socket, whose listening ports come from Port/ListenAddress.
    socket_activated: bool


# The distributions the suite builds, by /etc/os-release (ID, VERSION_ID). Both packages' own
# sshd_config set the same non-security keywords (UsePAM yes, PrintMotd no, AcceptEnv
# LANG LC_*, Subsystem sftp /usr/lib/openssh/sftp-server); the difference is that Ubuntu
# 24.04 starts sshd from ssh.socket (Debian 12 from ssh.service).
DISTRIBUTIONS: dict[tuple[str, str], Distribution] = {
    ("debian", "12"): Distribution("Debian 12", accept_env="LANG LC_*", socket_activated=False),
    ("ubuntu", "24.04"): Distribution("Ubuntu 24.04", accept_env="LANG LC_*", socket_activated=True),
}


@dataclass(frozen=True)
class SftpServer(Fact[str | None]):
    """The first of SFTP_SERVERS that is an executable file; None without one."""

    @property
    def command(self) -> str:
        paths = " ".join(shlex.quote(path) for path in SFTP_SERVERS)
        return f'for p in {paths}; do if [ -f "$p" ] && [ -x "$p" ]; then echo "$p"; break; fi; done'

    def parse(self, output: str) -> str | None:
        return output.strip() or None


@dataclass(frozen=True)
class MainConfig:
    """The inputs of sshd's main config, read from the host."""

    distribution: Distribution
    port: int
    # An sftp-server binary, or sshd's built-in "internal-sftp" without one: the suite
    # itself reads and writes files over SFTP.
    sftp_server: str


def main_config(host: Host) -> MainConfig:
    """The main config's inputs from the host's facts; ApplyError on a distribution whose
    openssh-server defaults the suite does not know."""
    release = host.fact(OsRelease())
    distribution = DISTRIBUTIONS.get((release.get("ID", ""), release.get("VERSION_ID", "")))
    if distribution is None:
        found = release.get("PRETTY_NAME") or f"ID={release.get('ID')!r} {release.get('VERSION_ID')!r}"
        known = " and ".join(d.name for d in DISTRIBUTIONS.values())
        raise ApplyError(
            f"[{host.name}] {found}: the suite renders {SSHD_CONFIG} for {known} only; add this "
            "distribution's openssh-server defaults to steps.alpha.sshd.DISTRIBUTIONS"
        )
    return MainConfig(distribution, host.fact(SSHSession()).port, host.fact(SftpServer()) or "internal-sftp")


def render_main(config: MainConfig) -> str:
    """The main config's text: the drop-in Include first, then the distribution's defaults."""
    return ops.render(
        TEMPLATES / "sshd_config.j2",
        {
            "dropin": DROPIN,
            "port": config.port,
            "distribution": config.distribution.name,
            "socket_activated": config.distribution.socket_activated,
            "accept_env": config.distribution.accept_env,
            "sftp_server": config.sftp_server,
        },
    )


def validate_command(*, main: str = SSHD_CONFIG, dropin: str = "{path}") -> str:
    """``Put.validate`` for either file: ``sshd -t`` on exactly what sshd reads after the swap.

    A copy of ``main`` has its Include pointed at a private copy of the drop-in directory in
    which ``dropin`` takes the hardening drop-in's place (the other drop-ins as they are). The
    live file being replaced is never read, so a broken one cannot fail its own repair. One
    of ``main`` and ``dropin`` is ``{path}``: the candidate, filled in by the runner.
    """

    def arg(path: str) -> str:
        return path if path == "{path}" else shlex.quote(path)

    include = f"Include {DROPIN_DIR}/*.conf"
    pattern = "^" + include.replace(".", "\\.").replace("*", "\\*") + "\\$"
    name = posixpath.basename(DROPIN)
    steps = (
        f'for f in {DROPIN_DIR}/*.conf; do if [ -f "$f" ] && [ "$f" != {shlex.quote(DROPIN)} ]; '
        'then cp -- "$f" "$d/"; fi; done',
        f'cp -- {arg(dropin)} "$d/{name}"',
        f'sed "s#{pattern}#Include $d/*.conf#" {arg(main)} > "$d/sshd_config"',
        'if ! grep -qxF "Include $d/*.conf" "$d/sshd_config"; then '
        "echo 'the main config has no drop-in Include line' >&2; exit 1; fi",
        'sshd -t -f "$d/sshd_config"',
    )
    return (
        "mkdir -p -m 0700 /run/hvsuite && d=$(mktemp -d /run/hvsuite/sshd-test.XXXXXX) && "
        f'( set -e; {"; ".join(steps)} ); status=$?; rm -rf -- "$d"; exit $status'
    )


def install_config(host: Host, ssh: SSHHardening, text: str, *, guard_seconds: int = 120) -> OpResult:
    """sshd's main config (rendered from the host's facts) and ``text`` as the drop-in, each
    compared by content, owner and mode. New content is validated and swapped, main config
    first (``sshd -t``, see :func:`validate_command`), confirmed (``sshd -t``, ``sshd -T``),
    reloaded and proven by a new login under the guard; anything failing rolls both back."""
    op = f"sshd config {SSHD_CONFIG}, {DROPIN}"
    if host.mode == "verify":
        return host.unchanged(op, "verify-only")
    desired = {SSHD_CONFIG: render_main(main_config(host)).encode(), DROPIN: text.encode()}
    state = {path: ops.file_state(host, path) for path in desired}
    rewrite = [path for path, data in desired.items() if state[path][1] != data]
    metadata = [
        command
        for path in desired
        if path not in rewrite
        for command in ops.metadata_commands(path, state[path][0])
    ]
    if not rewrite:
        # Owner or mode alone: sshd reads the same text, nothing to validate or reload.
        return host.execute(op, metadata, reason="" if metadata else "main config and drop-in as desired")
    commands: list[Command] = []
    if SSHD_CONFIG in rewrite:
        dropin_after = DROPIN
        if DROPIN in rewrite:
            commands += ["mkdir -p -m 0700 /run/hvsuite", Put(STAGED_DROPIN, desired[DROPIN], "0600")]
            dropin_after = STAGED_DROPIN
        validate = validate_command(main="{path}", dropin=dropin_after)
        commands.append(Put(SSHD_CONFIG, desired[SSHD_CONFIG], "0644", validate=validate))
    if DROPIN in rewrite:
        commands += [
            f"install -d -m 0755 {DROPIN_DIR}",
            Put(DROPIN, desired[DROPIN], "0644", validate=validate_command()),
        ]
        if SSHD_CONFIG in rewrite:
            commands.append(f"rm -f -- {STAGED_DROPIN}")
    commands += [*metadata, "sshd -t", effective_check_command(ssh), RELOAD]
    diff = "".join(ops.unified_diff(path, state[path][1], desired[path]) for path in rewrite)
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


@step("SSH hardening")
def apply(ctx: Context) -> None:
    """Everything of the "SSH hardening" task, in a safe order: allowed host keys exist
    before the drop-in names them; the main config and the drop-in converge together (a
    drifted main config is repaired first); weak keys go only after sshd stopped loading them."""
    host, ssh = ctx.host, ctx.settings.alpha.ssh
    # The banner files exist before the drop-in names one of them.
    baseline.banner(host, ctx.settings)
    host_keys(host, ssh)
    install_config(host, ssh, render(ssh), guard_seconds=ctx.settings.alpha.guard_seconds)
    weak_host_keys(host, ssh)
    moduli(host)
