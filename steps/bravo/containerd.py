"""Team Bravo: containerd, runc and the CNI plugins from the OS archive, one managed config.

Apply: packages; on hosts with device-mapper, a loop-backed thin pool brought up by a oneshot
unit before containerd (flintlock's devmapper snapshotter); ``config.toml`` rendered from
settings, checked by containerd itself (``containerd --config FILE config dump``) before it
replaces the live one; containerd restarted only when its config changed.

Verification helpers: the plugin table (``ctr plugins ls``) as a fact, and pulling an image
from a registry and running it to its output in the suite's own containerd namespace.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.extensions import hooks
from apply.facts import Fact
from apply.runner import CommandResult, Host
from settings.base import Waiver
from steps.bravo.settings import BravoSettings

TEMPLATES = Path(__file__).parent / "templates"

SERVICE = "containerd"
THINPOOL_UNIT = "hvsuite-thinpool.service"
THINPOOL_SCRIPT = "/usr/local/sbin/hvsuite-thinpool"
# dmsetup for the thin pool; losetup, blockdev and truncate come with util-linux/coreutils.
DEVMAPPER_PACKAGES = ("dmsetup",)
VALIDATE = "containerd --config {path} config dump >/dev/null"
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,75}$")


def render_config(
    bravo: BravoSettings, *, restrict_oom_score_adj: bool, devmapper: bool, sandbox_image: str | None
) -> str:
    """The managed /etc/containerd/config.toml (containerd 1.6/1.7, config version 2)."""
    return ops.render(
        TEMPLATES / "containerd-config.toml.j2",
        {
            "sandbox_image": sandbox_image,
            "restrict_oom_score_adj": restrict_oom_score_adj,
            "snapshotter": bravo.snapshotter,
            "systemd_cgroup": bravo.systemd_cgroup,
            "cni_bin_dir": bravo.cni_bin_dir,
            "cni_conf_dir": bravo.cni_conf_dir,
            "devmapper": bravo.devmapper if devmapper else None,
            "thinpool_unit": THINPOOL_UNIT,
        },
    )


def apply_thinpool(host: Host, bravo: BravoSettings) -> None:
    """The thin pool's script and unit, enabled and started."""
    pool = bravo.devmapper
    with host.step(f"devmapper thin pool {pool.pool_name}"):
        ops.packages(host, DEVMAPPER_PACKAGES)
        ops.file(
            host,
            THINPOOL_SCRIPT,
            ops.render(
                TEMPLATES / "hvsuite-thinpool.sh.j2",
                {
                    "pool_name": pool.pool_name,
                    "data_dir": pool.data_dir,
                    "data_size": pool.data_size,
                    "metadata_size": pool.metadata_size,
                    "block_sectors": pool.block_sectors,
                    "low_water_mark": pool.low_water_mark,
                },
            ),
            mode="0755",
            validate="sh -n {path}",
        )
        unit = ops.template(
            host,
            f"/etc/systemd/system/{THINPOOL_UNIT}",
            TEMPLATES / "hvsuite-thinpool.service.j2",
            {"pool_name": pool.pool_name, "script": THINPOOL_SCRIPT},
        )
        ops.daemon_reload(host, force=unit.changed)
        ops.service(host, THINPOOL_UNIT, enabled=True, running=True)


# Where the OS's containernetworking-plugins install (Debian's and Ubuntu's).
PACKAGE_CNI_DIR = "/usr/lib/cni"
# The plugins of the package the suite's own pod networks use (Delta's bootstrap bridge,
# Echo-1's chain).
PACKAGE_PLUGINS = ("bridge", "host-local", "loopback", "portmap", "bandwidth")


def package_plugins(host: Host, cni_bin_dir: str) -> None:
    """Where containerd looks elsewhere (Calico's /opt/cni/bin), the package's plugins are
    there too. ``creates``: a plugin a pod network later replaces with its own is kept."""
    if cni_bin_dir == PACKAGE_CNI_DIR:
        return
    ops.directory(host, cni_bin_dir)
    for plugin in PACKAGE_PLUGINS:
        ops.command(
            host,
            f"install -m 0755 {PACKAGE_CNI_DIR}/{plugin} {cni_bin_dir}/{plugin}",
            creates=f"{cni_bin_dir}/{plugin}",
            name=f"CNI plugin {plugin} in {cni_bin_dir}",
        )


@step("containerd")
def apply(ctx: Context) -> None:
    """containerd installed, configured and running.

    Where the profile waives device-mapper, the devmapper snapshotter is left out of the
    config rather than configured to fail.
    """
    host, bravo = ctx.host, ctx.settings.bravo
    devmapper = not ctx.profile.waives(Waiver.DEVMAPPER)
    ops.packages(host, bravo.packages)
    if devmapper:
        apply_thinpool(host, bravo)
    ops.directory(host, bravo.cni_conf_dir)
    package_plugins(host, bravo.cni_bin_dir)
    config = ops.file(
        host,
        bravo.config_path,
        render_config(
            bravo,
            restrict_oom_score_adj=bravo.oom_score_adj_restricted(ctx.profile),
            devmapper=devmapper,
            sandbox_image=bravo.sandbox_image
            or hooks().containerd_sandbox_image(settings=ctx.settings, profile=ctx.profile),
        ),
        validate=VALIDATE,
    )
    ops.service(host, SERVICE, enabled=True, running=True, restart=config.changed)


# -- verification -------------------------------------------------------------------------


@dataclass(frozen=True)
class Plugin:
    type: str
    id: str
    status: str  # ok, skip, error


@dataclass(frozen=True)
class ContainerdPlugins(Fact[dict[tuple[str, str], Plugin]]):
    """``ctr plugins ls``: (type, id) -> plugin with its status."""

    @property
    def command(self) -> str:
        return "ctr plugins ls"

    def parse(self, output: str) -> dict[tuple[str, str], Plugin]:
        lines = output.splitlines()
        if not lines or not lines[0].split()[:2] == ["TYPE", "ID"]:
            raise ValueError(f"not a 'ctr plugins ls' table: {output[:200]!r}")
        plugins: dict[tuple[str, str], Plugin] = {}
        for line in lines[1:]:
            fields = line.split()
            if len(fields) < 4:
                continue
            plugin = Plugin(type=fields[0], id=fields[1], status=fields[-1])
            plugins[(plugin.type, plugin.id)] = plugin
        return plugins


def snapshotter_status(plugins: dict[tuple[str, str], Plugin], name: str) -> str:
    plugin = plugins.get(("io.containerd.snapshotter.v1", name))
    return plugin.status if plugin else "absent"


def pull(
    host: Host, namespace: str, reference: str, *, plain_http: bool, snapshotter: str, timeout: float
) -> CommandResult:
    """Pull an image over the network into ``namespace`` and unpack it with ``snapshotter``;
    raises on failure."""
    flags = f" --snapshotter {shlex.quote(snapshotter)}" + (" --plain-http" if plain_http else "")
    return host.run(
        f"ctr -n {shlex.quote(namespace)} images pull{flags} {shlex.quote(reference)}", timeout=timeout
    )


def run_container(
    host: Host,
    namespace: str,
    reference: str,
    container_id: str,
    args: list[str] | tuple[str, ...] = (),
    *,
    snapshotter: str,
) -> CommandResult:
    """Run the image once to completion (``--rm``) and return its output; never raises on
    the container's exit code, which the caller asserts. ``ctr run`` reads stdin: </dev/null."""
    if not _CONTAINER_ID.match(container_id):
        raise ValueError(f"container id {container_id!r} must match {_CONTAINER_ID.pattern}")
    argv = " ".join(shlex.quote(arg) for arg in args)
    return host.run(
        f"ctr -n {shlex.quote(namespace)} run --rm --snapshotter {shlex.quote(snapshotter)} "
        f"{shlex.quote(reference)} {container_id} {argv} </dev/null",
        check=False,
        timeout=120,
    )


def remove_image(host: Host, namespace: str, reference: str) -> CommandResult:
    return host.run(f"ctr -n {shlex.quote(namespace)} images rm {shlex.quote(reference)}", check=False)
