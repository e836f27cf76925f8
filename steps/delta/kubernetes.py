"""Team Delta: a Kubernetes node's software on a host (binaries, images, kubelet).

Where Kubernetes comes from is a :class:`Distribution`, chosen by ``delta.source``:

- ``recipe``: 1.20.2 built by the suite (``recipes.kubernetes``), the only route where
  no upstream artifact is reachable. Binaries and image archives come from the recipe's cache
  entry, each checked against the sha256 recorded when it was built; images are imported
  into containerd's ``k8s.io`` namespace because no registry serves them.
- ``release``: the pinned upstream release (``[delta.release]``): kubeadm, kubelet, kubectl
  and crictl from ``[artifacts]`` with their official sha256; kubeadm pulls the images from
  ``registry.k8s.io``.

kubelet runs as a systemd unit shaped like upstream's packages (kubeadm writes its config and
flags). On a host that shares its kernel with others (``profile.namespaced_sysctls_only``:
a privileged scratch server shares the controller's), kubelet's start-up kernel tunables
would be written to that shared kernel; a oneshot unit kubelet requires bind-mounts files
holding kubelet's values over those ``/proc/sys`` entries inside the host first, so kubelet
finds them set and writes nothing.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from apply import artifacts, ops
from apply.api import Context, step
from apply.extensions import hooks
from recipes import Entry, RecipeCache
from recipes import kubernetes as kubernetes_recipe
from settings.base import EffectiveProfile
from settings.model import Settings
from steps.delta import kubeadm_config

TEMPLATES = Path(__file__).parent / "templates"


API_PORT_NAME = "kube-apiserver"
CONFIG_DIR = "/etc/kubernetes"
BIN_DIR = "/usr/local/bin"
IMAGE_DIR = "/var/lib/hvsuite/images"
CONTAINERD_NAMESPACE = "k8s.io"
KUBELET_UNIT = "/etc/systemd/system/kubelet.service"
SYSCTL_GUARD = "hvsuite-kubelet-sysctls"
SYSCTL_GUARD_SCRIPT = f"/usr/local/sbin/{SYSCTL_GUARD}"
# What kubelet's container manager sets at start (setupKernelTunables; the same from 1.20
# to current releases). kube-proxy's conntrack writes are switched off in its config instead.
KUBELET_TUNABLES: dict[str, str] = {
    "vm.overcommit_memory": "1",
    "vm.panic_on_oom": "0",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
# Packages kubelet and kube-proxy call on the node (iptables for Services, conntrack for
# their cleanup, socat for port-forward).
NODE_PACKAGES = ("iptables", "conntrack", "socat")


@dataclass(frozen=True)
class Distribution:
    source: Literal["recipe", "release"]
    version: str
    image_repository: str
    pause_image: str
    # kubeadm's preflight needs crictl; no Debian release ships it.
    has_crictl: bool
    # CoreDNS: no image of it can be had where the recipe is used.
    has_coredns_image: bool


# kubeadm's constants.PauseVersion per minor version of a release (the sandbox image kubeadm
# tells kubelet to use; containerd's sandbox_image must name the same).
PAUSE_VERSIONS = {(1, 31): "3.10", (1, 32): "3.10", (1, 33): "3.10", (1, 34): "3.10.1", (1, 35): "3.10.1"}


def distribution(settings: Settings, profile: EffectiveProfile) -> Distribution:
    delta = settings.delta
    if delta.resolved_source(profile) == "recipe":
        return Distribution(
            "recipe",
            kubernetes_recipe.VERSION,
            kubernetes_recipe.IMAGE_REPOSITORY,
            kubernetes_recipe.image_reference("pause"),
            has_crictl=False,
            has_coredns_image=False,
        )
    release = delta.release
    minor = tuple(int(part) for part in release.version.split(".")[:2])
    pause = PAUSE_VERSIONS.get((minor[0], minor[1]))
    if pause is None:
        known = ", ".join(f"{a}.{b}" for a, b in sorted(PAUSE_VERSIONS))
        raise ValueError(
            f"delta.release.version {release.version}: no pause version known for it (known: {known})"
        )
    return Distribution(
        "release",
        release.version,
        release.image_repository,
        f"{release.image_repository}/pause:{pause}",
        has_crictl=True,
        has_coredns_image=True,
    )


def recipe_entry(ctx: Context) -> Entry:
    """The recipe's cache entry (its files are checked against their sha256 at every use).
    Waits for a build already running (the one started with the run), or runs it."""
    store = ctx.require_artifacts()
    recipe = kubernetes_recipe.recipe(ctx.settings)
    with ctx.host.step(f"Kubernetes {recipe.version} artifacts (recipe {recipe.entry_name})"):
        return RecipeCache().ensure(recipe, mirror=store.artifacts_dir)


def _install_recipe(ctx: Context) -> None:
    """The recipe's binaries, and its images imported into containerd (no registry serves
    them): each archive is copied when its sha256 differs, and imported when it was copied
    or containerd lacks the image."""
    host = ctx.host
    entry = recipe_entry(ctx)
    version = entry.manifest.version
    for name in kubernetes_recipe.BINARIES:
        rel = f"bin/{name}"
        artifacts.install_file(
            host,
            name,
            entry.file(rel),
            entry.manifest.files[rel].sha256,
            f"{BIN_DIR}/{name}",
            version=version,
        )
    ops.directory(host, IMAGE_DIR, mode="0700")
    images: dict[str, str] = json.loads(entry.file("images.json").read_text())
    for rel, reference in sorted(images.items()):
        dest = f"{IMAGE_DIR}/{Path(rel).name}"
        copied = artifacts.install_file(
            host, f"image {Path(rel).stem}", entry.file(rel), entry.manifest.files[rel].sha256, dest,
            mode="0600", version=version,
        )  # fmt: skip
        if copied.changed:
            host.execute(f"import {reference}", [_import(dest)])
        else:
            ops.command(host, _import(dest), unless=_image_present(reference), name=f"import {reference}")


def prepare(
    settings: Settings, profile: EffectiveProfile, artifacts_dir: Path | None
) -> tuple[str, Callable[[], object]] | None:
    """The controller's side of a node's software, to start in the background as the run
    starts (phases/plan.toml): the recipe's build (or cache check), or the release's downloads.
    The node step later finds the result in the cache, or waits for it there."""
    dist = distribution(settings, profile)
    if dist.source == "recipe":
        recipe = kubernetes_recipe.recipe(settings)
        return (
            f"Kubernetes {dist.version} artifacts (recipe {recipe.entry_name})",
            lambda: RecipeCache().ensure(recipe, mirror=artifacts_dir),
        )
    release = settings.delta.release
    store = artifacts.ArtifactStore(settings.artifacts, artifacts_dir=artifacts_dir)
    return f"Kubernetes {dist.version} release binaries", lambda: [
        store.fetch(key) for key in release.binaries
    ]


def _image_present(reference: str) -> str:
    return f"ctr -n {CONTAINERD_NAMESPACE} images ls -q | grep -qxF -- {shlex.quote(reference)}"


@step("Kubernetes node: binaries, images, kubelet")
def apply(ctx: Context) -> None:
    """kubeadm, kubelet and kubectl (and crictl for a release) installed with their sha256;
    the recipe's images imported into containerd; kubelet's unit installed and enabled (it
    starts for real once ``kubeadm init`` or ``join`` has written its config)."""
    host, profile = ctx.host, ctx.profile
    ops.packages(host, NODE_PACKAGES)
    ops.directory(host, CONFIG_DIR)
    # Pods' traffic is routed through the host (namespaced: the host's own network stack).
    ops.sysctls(host, {"net.ipv4.ip_forward": "1"}, persist_file="/etc/sysctl.d/90-hvsuite-kubernetes.conf")
    if distribution(ctx.settings, profile).source == "recipe":
        _install_recipe(ctx)
    else:
        release, store = ctx.settings.delta.release, ctx.require_artifacts()
        for key in release.binaries:
            artifacts.install(host, store, key)
    guard = profile.namespaced_sysctls_only
    if guard:
        script = ops.file(
            host,
            SYSCTL_GUARD_SCRIPT,
            ops.render(TEMPLATES / "kubelet-sysctls.sh.j2", {"tunables": KUBELET_TUNABLES}),
            mode="0755",
        )
        unit = ops.template(
            host,
            f"/etc/systemd/system/{SYSCTL_GUARD}.service",
            TEMPLATES / "kubelet-sysctls.service.j2",
            {"script": SYSCTL_GUARD_SCRIPT},
        )
        ops.daemon_reload(host, force=unit.changed)
        ops.service(
            host,
            f"{SYSCTL_GUARD}.service",
            enabled=True,
            running=True,
            restart=script.changed or unit.changed,
        )
    kubelet = ops.template(
        host,
        KUBELET_UNIT,
        TEMPLATES / "kubelet.service.j2",
        {"bin_dir": BIN_DIR, "sysctl_guard": f"{SYSCTL_GUARD}.service" if guard else None},
    )
    ops.daemon_reload(host, force=kubelet.changed)
    # Enabled now; running is the control plane's business (kubelet loops until kubeadm has
    # written /var/lib/kubelet/config.yaml).
    ops.service(host, "kubelet", enabled=True, running=None)


def node_name(ctx: Context) -> str:
    # kubelet registers the node under the host's name, lowercased.
    return ctx.host.run("hostname").stdout.strip().lower()


def cluster_spec(ctx: Context) -> kubeadm_config.ClusterSpec:
    """What kubeadm is told about this cluster, from the settings and the host."""
    settings, dist = ctx.settings, distribution(ctx.settings, ctx.profile)
    delta = settings.delta
    return kubeadm_config.ClusterSpec(
        version=dist.version,
        node_name=node_name(ctx),
        advertise_address=ctx.address,
        bind_port=settings.port("Delta", API_PORT_NAME),
        cluster_name=delta.cluster_name,
        pod_subnet=delta.pod_subnet,
        service_subnet=delta.service_subnet,
        image_repository=dist.image_repository,
        etcd=delta.resolved_etcd(ctx.profile),
        cert_sans=(ctx.address, *endpoint_hosts(settings)),
        namespaced_sysctls_only=ctx.profile.namespaced_sysctls_only,
        has_crictl=dist.has_crictl,
        has_coredns_image=dist.has_coredns_image,
        control_plane_timeout=delta.ready_timeout,
    )


def endpoint_hosts(settings: Settings) -> tuple[str, ...]:
    """The host of the declared control-plane endpoint (a later team's virtual IP), which the
    API server's certificate names from the start."""
    endpoint = hooks().control_plane_endpoint(settings=settings)
    return (endpoint.rsplit(":", 1)[0],) if endpoint else ()


def _import(archive: str) -> str:
    return f"ctr -n {CONTAINERD_NAMESPACE} images import -- {shlex.quote(archive)}"


def local_tunables() -> dict[str, str]:
    """kubelet's tunables as the machine running the suite reads them."""
    return {key: Path("/proc/sys", *key.split(".")).read_text().strip() for key in KUBELET_TUNABLES}
