"""Team Bravo: flintlockd enabled and running on containerd with Alpha's certificate.

Base installs the binaries, the bridge and the unit (`steps.base.flintlock`) and neither
enables nor starts flintlockd, because it needs containerd (its socket and, where the kernel
has device-mapper, the thin pool and snapshotter); Alpha issues the certificates. Bravo,
once containerd serves, enables and starts it, restarting it when the certificate on disk is
newer than the running process, its unit changed or containerd changed, and waits for its
gRPC port. Base and Bravo render the same unit from settings, so they never undo each other.
"""

from __future__ import annotations

import shlex

from apply import ops
from apply.api import Context, step
from apply.facts import CommandSucceeds
from apply.runner import ApplyError
from settings.model import Settings
from steps.base.flintlock import UNIT, install_units, tls_files
from steps.bravo import containerd

# How long Bravo waits for the gRPC port to listen after starting flintlockd.
LISTEN_TIMEOUT = 30


def certificate_newer(settings: Settings) -> CommandSucceeds:
    """Succeeds when the server certificate on disk is newer than flintlockd's last start
    (false while flintlockd is not running: it has no start time)."""
    cert = shlex.quote(tls_files(settings).server_cert)
    return CommandSucceeds(
        f"started=$(systemctl show -p ActiveEnterTimestamp --timestamp=unix {UNIT} | sed 's/.*=@//'); "
        f'[ -n "$started" ] && [ "$(stat -c %Y {cert})" -gt "$started" ]'
    )


def containerd_restarted(settings: Settings) -> CommandSucceeds:
    """Succeeds when containerd (re)started after flintlockd did: flintlockd then holds a
    connection to a containerd that is gone (false while flintlockd is not running)."""
    return CommandSucceeds(
        f"ours=$(systemctl show -p ActiveEnterTimestamp --timestamp=unix {UNIT} | sed 's/.*=@//'); "
        f"theirs=$(systemctl show -p ActiveEnterTimestamp --timestamp=unix {containerd.SERVICE} "
        "| sed 's/.*=@//'); "
        '[ -n "$ours" ] && [ -n "$theirs" ] && [ "$theirs" -gt "$ours" ]'
    )


def containerd_serves(settings: Settings) -> CommandSucceeds:
    """containerd is active and its socket (the one flintlockd dials) exists."""
    socket = shlex.quote(settings.base.containerd_socket)
    return CommandSucceeds(f"systemctl is-active --quiet {containerd.SERVICE} && test -S {socket}")


def listen_command(port: int, timeout: int = LISTEN_TIMEOUT) -> str:
    """Exits 0 once a TCP socket listens on ``port``; 1 after ``timeout`` seconds."""
    return (
        f"i=0; while [ $i -lt {timeout * 2} ]; do "
        f"ss -Hltn 'sport = :{port}' | grep -q . && exit 0; i=$((i+1)); sleep 0.5; done; exit 1"
    )


@step("Flintlock runtime")
def apply(ctx: Context) -> None:
    """Bravo: flintlockd enabled and running on containerd with Alpha's certificate.

    Refuses to start it while containerd does not serve. Restarted when the certificate on
    disk is newer than the running process, when its units changed or when containerd
    (re)started after it. After a (re)start, waits up to ``LISTEN_TIMEOUT`` s for the gRPC
    port; a flintlockd that does not listen fails the step with its journal."""
    host, settings = ctx.host, ctx.settings
    if host.mode == "apply" and not host.fact(containerd_serves(settings)):
        raise ApplyError(
            f"[{host.name}] flintlockd needs containerd serving on {settings.base.containerd_socket}: "
            "apply Bravo's containerd step first"
        )
    results = install_units(host, settings)
    units_changed = any(result.changed for result in results[:2])
    stale = host.mode != "verify" and (
        host.fact(certificate_newer(settings)) or host.fact(containerd_restarted(settings))
    )
    service = ops.service(host, UNIT, enabled=True, running=True, restart=bool(stale or units_changed))
    if host.mode == "apply" and service.changed:
        port = settings.base.grpc_port
        if not host.run(listen_command(port), check=False, timeout=LISTEN_TIMEOUT + 15).ok:
            journal = host.run(f"journalctl -u {UNIT} -n 40 --no-pager", check=False).stdout
            raise ApplyError(
                f"[{host.name}] flintlockd did not listen on {port}/tcp within {LISTEN_TIMEOUT}s "
                f"after it was started; its journal:\n{journal}"
            )
