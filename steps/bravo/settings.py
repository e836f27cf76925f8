"""The settings of Team Bravo (the config's [bravo] section): containerd, its snapshotter, the
suite's registry and the image pull check."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from settings.base import EffectiveProfile, Strict, TeamSettings, Waiver


class DevmapperSettings(Strict):
    """containerd's devmapper snapshotter on a loop-backed LVM-less thin pool (flintlock's
    layout). Files are sparse: sizes are upper bounds, not allocations."""

    pool_name: str = Field("flintlock-thinpool", pattern=r"^[a-z][a-z0-9_-]{1,60}$")
    # Backing files for the pool's data and metadata devices.
    data_dir: str = Field("/var/lib/containerd-thinpool", pattern=r"^/[^\s]+$")
    data_size: str = Field("100G", pattern=r"^[1-9][0-9]*[MGT]$")
    metadata_size: str = Field("2G", pattern=r"^[1-9][0-9]*[MGT]$")
    # Thin-pool chunk in 512-byte sectors (128 = 64 KiB) and low-water mark in chunks.
    block_sectors: int = Field(128, ge=128, le=2097152)
    low_water_mark: int = Field(32768, ge=0)
    base_image_size: str = Field("10GB", pattern=r"^[1-9][0-9]*[KMGT]B$")


class PullCheckSettings(Strict):
    """The image Bravo pulls over the network and runs to a known output."""

    # "suite-registry": the suite builds a tiny marker image, starts an OCI registry on the
    # target (port "oci-registry") and pushes it there; "public": pull `public_reference`.
    # "auto": suite-registry where the profile waives upstream-artifacts (no internet),
    # public elsewhere.
    source: Literal["auto", "suite-registry", "public"] = "auto"
    public_reference: str = Field("docker.io/library/busybox:1.36.1", pattern=r"^[a-z0-9.-]+(:\d+)?/\S+$")
    # Run as `<args> <marker>` in the public image; the container must print the marker.
    public_args: list[str] = ["echo"]
    # Repository of the suite's own image in the suite's registry.
    repository: str = Field("hvsuite/marker", pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$")
    pull_timeout: float = Field(300.0, gt=0)

    def resolved_source(self, profile: EffectiveProfile) -> Literal["suite-registry", "public"]:
        if self.source == "auto":
            return "suite-registry" if profile.waives(Waiver.UPSTREAM_ARTIFACTS) else "public"
        return self.source


class BravoSettings(TeamSettings):
    """Team Bravo: containerd, runc and CNI plugins from the OS archive, one managed config."""

    section: ClassVar[str] = "bravo"

    packages: list[str] = ["containerd", "runc", "containernetworking-plugins"]
    config_path: str = "/etc/containerd/config.toml"
    # kubelet (Team Delta) runs with the systemd cgroup driver; runc must match.
    systemd_cgroup: bool = True
    snapshotter: Literal["overlayfs", "native"] = "overlayfs"
    # Debian and Ubuntu install the CNI plugins here (not upstream's /opt/cni/bin).
    cni_bin_dir: str = "/usr/lib/cni"
    cni_conf_dir: str = "/etc/cni/net.d"
    # The pod sandbox image; None: what a later team contributes (Team Delta: the pause image
    # kubeadm names for its Kubernetes; steps/bravo/hookspecs.py), else containerd's default.
    sandbox_image: str | None = None
    # None: as the profile says (profiles.<name>.restrict_oom_score_adj).
    restrict_oom_score_adj: bool | None = None
    # The suite's test containers live in their own namespace, apart from Kubernetes' k8s.io.
    namespace: str = Field("hvsuite", pattern=r"^[a-z][a-z0-9._-]*$")
    devmapper: DevmapperSettings = DevmapperSettings()
    pull_check: PullCheckSettings = PullCheckSettings()
    # Debian's docker-registry (distribution v2) for the suite's registry.
    registry_package: str = "docker-registry"
    registry_storage: str = "/var/lib/docker-registry"

    def oom_score_adj_restricted(self, profile: EffectiveProfile) -> bool:
        if self.restrict_oom_score_adj is None:
            return profile.restrict_oom_score_adj
        return self.restrict_oom_score_adj
