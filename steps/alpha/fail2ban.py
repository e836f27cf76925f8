"""fail2ban with an sshd jail reading the journal and banning with nftables, its settings
in the local jail file (``/etc/fail2ban/jail.local``, which package updates never change),
the service sandboxed.

The jail file is validated with ``fail2ban-client -t`` after it is written and restored if
the check fails; the service restarts only when the jail changed. Loopback, the
configured ``ignoreip`` and (``ignore_controller``) the address the suite manages the host
from are never banned, so the suite's own probes cannot lock it out.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.facts import SSHSession
from apply.poll import eventually
from apply.runner import ApplyError
from steps.alpha import sandbox
from steps.alpha.settings import Fail2banSettings

TEMPLATES = Path(__file__).parent / "templates"


JAIL = "/etc/fail2ban/jail.local"
# Where earlier versions kept the jail: removed, so one file holds the suite's settings.
OLD_JAIL = "/etc/fail2ban/jail.d/hvsuite-sshd.local"
UNIT = "fail2ban.service"
STATUS = "fail2ban-client status sshd"
ACTIONS = "fail2ban-client get sshd actions"


def ignore_list(f2b: Fail2banSettings, controller: str | None) -> list[str]:
    entries = ["127.0.0.1/8", "::1", *f2b.ignoreip]
    if f2b.ignore_controller and controller:
        entries.append(controller)
    return list(dict.fromkeys(entries))


def render(f2b: Fail2banSettings, *, ssh_port: int, controller: str | None) -> str:
    return ops.render(
        TEMPLATES / "fail2ban-jail.local.j2",
        {"f2b": f2b, "ssh_port": ssh_port, "ignoreip": ignore_list(f2b, controller)},
    )


@step("fail2ban")
def apply(ctx: Context) -> None:
    """fail2ban's sshd jail on the journal, banning with nftables; never the controller;
    the service sandboxed."""
    host, f2b, ssh_port = ctx.host, ctx.settings.alpha.fail2ban, ctx.settings.port("Alpha", "ssh")
    # python3-systemd: the journal backend; nftables: the ban action.
    ops.packages(host, ["fail2ban", "python3-systemd", "nftables"])
    if host.mode == "verify":
        host.unchanged(f"file {JAIL}", "verify-only")
        return
    controller = host.fact(SSHSession()).client if f2b.ignore_controller else None
    previous = host.read(JAIL)
    jail = ops.file(host, JAIL, render(f2b, ssh_port=ssh_port, controller=controller))
    if jail.changed and host.mode == "apply":
        check = host.run("fail2ban-client -t", check=False)
        if not check.ok:
            if previous is None:
                host.run(f"rm -f -- {shlex.quote(JAIL)}")
            else:
                host.put(JAIL, previous)
            raise ApplyError(
                f"[{host.name}] fail2ban rejected {JAIL}; the previous jail was restored:\n"
                f"{(check.stderr or check.stdout).strip()[-2000:]}"
            )
    old = ops.absent(host, OLD_JAIL)
    confined = sandbox.sandbox(host, UNIT, sandbox.PROFILES[UNIT])
    restart = jail.changed or old.changed or confined.changed
    ops.service(host, UNIT, enabled=True, running=True, restart=restart)


_BANNED = re.compile(r"Banned IP list:\s*(?P<ips>.*)$", re.MULTILINE)


def parse_banned(status_output: str) -> set[str]:
    """IPs in ``fail2ban-client status <jail>`` output."""
    match = _BANNED.search(status_output)
    return set(match["ips"].split()) if match else set()


def unban_command(address: str) -> str:
    return f"fail2ban-client set sshd unbanip {shlex.quote(address)}"


# -- the ban drill, run from a second host -----------------------------------------------------


def reach_command(address: str, port: int) -> str:
    """Exits 0 when a TCP connection to ``address:port`` opens within 3 s (bash, no ssh)."""
    return f"timeout 3 bash -c {shlex.quote(f'exec 3<>/dev/tcp/{address}/{port}')}"


def failed_logins_command(address: str, port: int, attempts: int) -> str:
    """``attempts`` password-less logins as a user that does not exist, each bounded: once
    banned, the packets of a half-open session vanish. The probe need not trust the target's
    host key: it sends no credential and only has to fail authentication."""
    ssh = (
        "timeout 8 ssh -n -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        f"-o ConnectTimeout=5 -o PubkeyAuthentication=no -p {int(port)} "
        f"hvs-no-such-user@{shlex.quote(address)} true"
    )
    return f"for i in $(seq {int(attempts)}); do {ssh}; done"


def wait_for_ban(status: Callable[[], str], address: str, *, timeout: float = 30.0) -> bool:
    """Poll ``status()`` (``STATUS`` output) once a second until ``address`` is banned;
    False if it is not within ``timeout`` seconds."""
    return eventually(lambda: address in parse_banned(status()), timeout=timeout)
