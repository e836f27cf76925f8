"""Team Base: flintlockd as a systemd service serving gRPC with TLS, and a firecracker boot test.

Plan order, because flintlockd needs containerd (its socket and the devmapper snapshotter):
Base (phase 0) installs the binaries, the bridge and the unit, and neither enables nor starts
flintlockd. The unit serves the TLS files the team issuing certificates contributes
(`steps.base.hookspecs`: Alpha, which also proves from the unit as systemd loaded it that
flintlockd would serve them and never ``--insecure``). Bravo enables and starts flintlockd
once containerd is up (`steps.bravo.flintlock_runtime`). The unit has ``ConditionPathExists``
on the certificate and key, so it never starts without TLS. Base and Bravo render the same
unit from settings, so they never undo each other.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.extensions import hooks
from apply.facts import Fact
from apply.runner import ApplyError, CommandResult, Host, OpResult
from settings.model import Settings

TEMPLATES = Path(__file__).parent / "templates"


UNIT = "flintlockd.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
BRIDGE_UNIT = "hvsuite-flkbr0.service"
BRIDGE_UNIT_FILE = f"/etc/systemd/system/{BRIDGE_UNIT}"
# The command line systemd runs (read by checks: the unit as systemd loaded it).
EXEC_START = f"systemctl show -p ExecStart {UNIT}"
# Whether that loaded view is stale against the unit file on disk ("yes"/"no").
NEED_DAEMON_RELOAD = f"systemctl show -p NeedDaemonReload --value {UNIT}"


@dataclass(frozen=True)
class TLSFiles:
    """The TLS material flintlockd serves: its server certificate and key, and the CA it
    validates clients against (None: no client authentication)."""

    server_cert: str
    server_key: str
    client_ca: str | None = None


@dataclass(frozen=True)
class DefaultRouteInterface(Fact[str | None]):
    """The interface of the IPv4 default route (flintlock's parent interface)."""

    @property
    def command(self) -> str:
        return "ip -o -4 route show default"

    def parse(self, output: str) -> str | None:
        for line in output.splitlines():
            words = line.split()
            if "dev" in words:
                return words[words.index("dev") + 1]
        return None


def grpc_port_declared(settings: Settings) -> None:
    declared = {rule.port for rule in settings.ports if rule.proto == "tcp"}
    if settings.base.grpc_port not in declared:
        raise ApplyError(
            f"base.grpc_port {settings.base.grpc_port} is not declared in [[ports]]: add "
            f'{{ name = "flintlock-grpc", team = "Base", port = {settings.base.grpc_port} }} '
            "so the firewall opens it"
        )


def parent_interface(host: Host, settings: Settings) -> str:
    if settings.base.parent_iface:
        return settings.base.parent_iface
    iface = host.fact(DefaultRouteInterface())
    if not iface:
        raise ApplyError(
            f"[{host.name}] no IPv4 default route to take flintlock's parent interface from; "
            "set base.parent_iface"
        )
    return iface


def tls_only(exec_start: str) -> bool:
    """flintlockd's command line names a TLS certificate and never ``--insecure``."""
    return "--tls-cert" in exec_start and "--insecure" not in exec_start


def exec_flag(exec_start: str, flag: str) -> str | None:
    """The value of ``--flag=value`` on flintlockd's command line (None when absent)."""
    for word in exec_start.split():
        name, found, value = word.partition("=")
        if found and name == flag:
            return value or None
    return None


def parent_iface_of(exec_start: str) -> str | None:
    """The ``--parent-iface=`` value of flintlockd's command line."""
    return exec_flag(exec_start, "--parent-iface")


def tls_files(settings: Settings) -> TLSFiles:
    """flintlockd's TLS material, as the team that issues it contributes it
    (`steps.base.hookspecs`). flintlockd never serves without TLS: with no contribution the
    unit cannot be rendered."""
    files = hooks().flintlock_tls_files(settings=settings)
    if files is None:
        raise ApplyError(
            "no team of the plan provides flintlockd's TLS certificates (hook flintlock_tls_files)"
        )
    return files


def render_unit(settings: Settings, parent_iface: str) -> str:
    base, tls = settings.base, tls_files(settings)
    return ops.render(
        TEMPLATES / "flintlockd.service.j2",
        {
            "flintlockd": settings.artifacts[base.flintlockd].dest,
            "firecracker": settings.artifacts[base.firecracker].dest,
            "cloud_hypervisor": settings.artifacts[base.cloud_hypervisor].dest,
            "grpc_endpoint": f"0.0.0.0:{base.grpc_port}",
            "parent_iface": parent_iface,
            "bridge": base.bridge,
            "bridge_unit": BRIDGE_UNIT,
            "containerd_socket": base.containerd_socket,
            "state_dir": base.state_dir,
            "tls_cert": tls.server_cert,
            "tls_key": tls.server_key,
            "tls_client_ca": tls.client_ca or "",
        },
    )


def install_units(host: Host, settings: Settings) -> list[OpResult]:
    """Bridge and flintlockd units written (the same text Base and Bravo render)."""
    grpc_port_declared(settings)
    iface = parent_interface(host, settings) if host.mode != "verify" else "(verify)"
    bridge_context = {"bridge": settings.base.bridge}
    bridge = ops.template(host, BRIDGE_UNIT_FILE, TEMPLATES / "hvsuite-bridge.service.j2", bridge_context)
    unit = ops.file(host, UNIT_FILE, render_unit(settings, iface))
    reload = ops.daemon_reload(host, force=bridge.changed or unit.changed)
    return [bridge, unit, reload, ops.service(host, BRIDGE_UNIT, enabled=True, running=True)]


@step("Flintlock unit")
def unit(ctx: Context) -> None:
    """Base: units installed and loaded by systemd; flintlockd's enablement and state are left
    alone (Bravo enables and starts it once containerd serves: enabled here, it would start at
    the next boot before containerd exists and fail)."""
    install_units(ctx.host, ctx.settings)
    ops.service(ctx.host, UNIT, enabled=None, running=None)


def boot_microvm(host: Host, settings: Settings) -> CommandResult:
    """Run ``boot_script`` on the target (read-only for the host: a temporary copy of the
    rootfs); exit 0 when the marker appeared. Bounded by the boot timeout plus 30 s."""
    return host.run(
        "sh -s", stdin=boot_script(settings), check=False, timeout=settings.base.microvm_boot_timeout + 30
    )


def boot_script(settings: Settings) -> str:
    """A POSIX sh script booting a firecracker microVM from a copy of the test rootfs and
    waiting for the boot marker on its serial console, bounded by microvm_boot_timeout.
    Exits 0 and prints the console tail when the marker appeared."""
    base = settings.base
    firecracker = shlex.quote(settings.artifacts[base.firecracker].dest)
    kernel = settings.artifacts[base.microvm_kernel].dest
    rootfs = shlex.quote(settings.artifacts[base.microvm_rootfs].dest)
    config = ops.render(
        TEMPLATES / "firecracker-boot.json.j2",
        {
            "kernel": kernel,
            "rootfs": "__ROOTFS__",
            "boot_args": base.microvm_boot_args,
        },
    )
    json.loads(config)  # the template must stay valid JSON
    marker = shlex.quote(base.microvm_boot_marker)
    timeout = int(base.microvm_boot_timeout)
    return f"""set -u
d=$(mktemp -d /run/hvsuite-microvm.XXXXXX) || exit 2
pid=
cleanup() {{
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
  rm -rf "$d"
}}
trap cleanup EXIT
cp -- {rootfs} "$d/rootfs.ext4" || exit 2
cat > "$d/vm.json" <<'HVSUITE_JSON'
{config.replace("__ROOTFS__", "ROOTFS_PATH")}HVSUITE_JSON
sed -i "s|ROOTFS_PATH|$d/rootfs.ext4|" "$d/vm.json"
{firecracker} --no-api --config-file "$d/vm.json" > "$d/console.log" 2>&1 </dev/null &
pid=$!
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt {timeout} ]; do
  if grep -qF -- {marker} "$d/console.log"; then
    echo "boot marker after $(( $(date +%s) - start ))s"; tail -n 20 "$d/console.log"; exit 0
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
echo "no boot marker within {timeout}s"; tail -n 60 "$d/console.log"; exit 1
"""
