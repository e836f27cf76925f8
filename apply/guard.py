"""Lock-out prevention for changes that can cut the operator off (sshd, firewall).

A guarded change: back up the files it may replace, arm a dead man's switch on the host (a
systemd timer that restores the backups and reloads, so a controller that loses its
connection mid-change still gets its access back), apply, then prove that a *new* SSH
login works. Proven: disarm. Not proven, or the change failed: restore now, prove access
again, and raise :class:`~apply.runner.ApplyError` naming what happened.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass

from apply.runner import ApplyError, Command, ConnectionLost, Host, OpResult, Put

ROLLBACK_DIR = "/run/hvsuite/rollback"


@dataclass(frozen=True)
class Guard:
    """What a change may touch and how to put it back."""

    # Short name: the systemd unit is hvsuite-guard-<name>, the backups /run/hvsuite/rollback/<name>.
    name: str
    files: tuple[str, ...]
    # Run after the files are restored (reload the service that reads them).
    restore: tuple[str, ...]
    # Run after the files are copied: save live state the files do not hold (a loaded ruleset).
    save: tuple[str, ...] = ()
    # The switch fires after this long unless the change was proven and disarmed.
    seconds: int = 120

    def __post_init__(self) -> None:
        if not self.name.replace("-", "").isalnum():
            raise ValueError(f"guard name {self.name!r} must be letters, digits and '-'")
        if self.seconds < 30:
            raise ValueError(
                f"guard {self.name}: seconds={self.seconds} leaves no time to prove access (>= 30)"
            )

    @property
    def unit(self) -> str:
        return f"hvsuite-guard-{self.name}"

    @property
    def timer(self) -> str:
        return f"{self.unit}.timer"

    @property
    def directory(self) -> str:
        return f"{ROLLBACK_DIR}/{self.name}"

    @property
    def script(self) -> str:
        return f"{self.directory}/restore.sh"


def backup_commands(guard: Guard) -> list[str]:
    """Copy each file (or record that it was absent) before the change."""
    directory = shlex.quote(guard.directory)
    commands = [f"rm -rf -- {directory} && mkdir -p -m 0700 -- {directory}"]
    for index, path in enumerate(guard.files):
        q = shlex.quote(path)
        saved = shlex.quote(f"{guard.directory}/{index}")
        commands.append(f"if [ -e {q} ]; then cp -a -- {q} {saved}; else touch {saved}.absent; fi")
    return [*commands, *guard.save]


def restore_script(guard: Guard) -> str:
    """A POSIX sh script restoring every backed-up file, then running ``guard.restore``."""
    lines = [
        "#!/bin/sh",
        f"# Restores what hvsuite changed under guard {guard.name!r}.",
        "set -u",
        "status=0",
    ]
    for index, path in enumerate(guard.files):
        q = shlex.quote(path)
        saved = shlex.quote(f"{guard.directory}/{index}")
        lines.append(
            f"if [ -e {saved}.absent ]; then rm -f -- {q}; else cp -a -- {saved} {q}; fi || status=1"
        )
    lines += [f"{command} || status=1" for command in guard.restore]
    lines.append("exit $status")
    return "\n".join(lines) + "\n"


def arm_commands(guard: Guard) -> list[Command]:
    unit = shlex.quote(guard.unit)
    return [
        Put(guard.script, restore_script(guard).encode(), "0700"),
        # A leftover switch from an interrupted run would make systemd-run refuse the name.
        f"systemctl stop -- {unit}.timer {unit}.service 2>/dev/null; "
        f"systemctl reset-failed -- {unit}.timer {unit}.service 2>/dev/null; "
        f"systemd-run --quiet --collect --unit={unit} --on-active={guard.seconds} "
        f"--timer-property=AccuracySec=1s /bin/sh {shlex.quote(guard.script)}",
    ]


def disarm_command(guard: Guard) -> str:
    """Stop the switch; fails only while its timer is still active. Stopping an already
    stopped (collected) timer is fine, so the command may safely run twice."""
    unit = shlex.quote(guard.unit)
    return (
        f"systemctl stop -- {unit}.timer 2>/dev/null; "
        f"! systemctl is-active --quiet -- {unit}.timer && rm -rf -- {shlex.quote(guard.directory)}"
    )


def armed_command(guard: Guard) -> str:
    return f"systemctl is-active --quiet -- {shlex.quote(guard.unit)}.timer"


def prove_login(host: Host, *, attempts: int = 6, delay: float = 1.0) -> None:
    """A brand-new key login must work. Retried briefly: a reloading sshd re-binds its
    socket. Raises ApplyError with the last failure."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            fresh = host.fresh()
        except (ApplyError, OSError, TypeError) as exc:
            last = exc
            if attempt + 1 < attempts:
                time.sleep(delay)
            continue
        fresh.close()
        return
    raise ApplyError(f"[{host.name}] a fresh SSH key login failed {attempts} times: {last}")


def guarded_change(
    host: Host,
    op: str,
    commands: Sequence[Command],
    guard: Guard,
    *,
    diff: str | None = None,
    lock: str | None = None,
) -> OpResult:
    """Apply ``commands`` under ``guard`` (see the module doc). Nothing to do: unchanged."""
    if host.mode != "apply" or not commands:
        # check mode records the change; verify mode and no-ops return without touching the host.
        return host.execute(op, list(commands), diff=diff, lock=lock)
    try:
        result = host.execute(
            op, [*backup_commands(guard), *arm_commands(guard), *commands], diff=diff, lock=lock
        )
    except ConnectionLost:
        # Cut off somewhere in backup, arm or change. Armed: something may have changed, so
        # restore before the step runs again. Not armed: the change itself never started, and
        # a restore script left by an earlier run must not run.
        if host.run(armed_command(guard), check=False).ok:
            _roll_back(host, guard, op, "the connection dropped during the change")
        raise
    except ApplyError as exc:
        _roll_back(host, guard, op, f"the change failed: {exc}")
        raise
    try:
        prove_login(host)
    except ApplyError as exc:
        _roll_back(host, guard, op, str(exc))
        raise ApplyError(
            f"[{host.name}] {op}: a new SSH login failed after the change, so it was rolled back "
            f"and access proven again. Cause: {exc}"
        ) from exc
    host.run(disarm_command(guard))
    return result


def _roll_back(host: Host, guard: Guard, op: str, why: str) -> None:
    try:
        restored = host.run(f"/bin/sh {shlex.quote(guard.script)}", check=False)
        host.run(f"systemctl stop -- {shlex.quote(guard.unit)}.timer", check=False)
    except ApplyError as unreachable:
        # The connection dropped and no new login gets in (the change may lock everyone out):
        # the host's own switch restores the files when its timer fires. Wait for it.
        _await_switch(host, guard, op, why, unreachable)
        return
    host.invalidate_facts()
    try:
        prove_login(host)
    except ApplyError as exc:
        raise ApplyError(
            f"[{host.name}] {op}: rollback after '{why}' did not bring a new login back "
            f"(restore exit {restored.exit_code}); the host's own switch is stopped, use the console. {exc}"
        ) from exc
    if not restored.ok:
        raise ApplyError(
            f"[{host.name}] {op}: rolled back after '{why}', access proven, but the restore script "
            f"exited {restored.exit_code}: {restored.stderr.strip()}"
        )


SWITCH_POLL = 5.0


def _await_switch(host: Host, guard: Guard, op: str, why: str, cause: ApplyError) -> None:
    """Prove a new login once the dead man's switch has fired (``guard.seconds`` after it
    was armed, plus a margin); raise ApplyError naming both failures if none comes back."""
    bound = guard.seconds + 30
    deadline = time.monotonic() + bound
    while True:
        try:
            host.fresh().close()
        except (ApplyError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise ApplyError(
                    f"[{host.name}] {op}: rollback after '{why}' could not reach the host ({cause}), and "
                    f"no new login came back within {bound} s, when the host's own switch should have "
                    f"restored the files; use the console. {exc}"
                ) from exc
            time.sleep(SWITCH_POLL)
            continue
        host.invalidate_facts()
        return
