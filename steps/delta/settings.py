"""The settings of Team Delta (the config's [delta] section): the Kubernetes control plane."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from settings.base import CIDR, EffectiveProfile, Strict, TeamSettings, Waiver


class KubernetesRelease(Strict):
    """An upstream Kubernetes release: binaries from dl.k8s.io, images from registry.k8s.io.
    The sha256 pins are the official ones (see docs/teams/delta.md for where each came from)."""

    version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    # Keys into [artifacts] for the binaries installed on every node.
    kubeadm: str = "kubeadm"
    kubelet: str = "kubelet"
    kubectl: str = "kubectl"
    crictl: str = "crictl"
    image_repository: str = "registry.k8s.io"

    @property
    def binaries(self) -> tuple[str, ...]:
        """The [artifacts] keys of every binary a node gets."""
        return (self.kubeadm, self.kubelet, self.kubectl, self.crictl)


class DeltaSettings(TeamSettings):
    """Team Delta: a kubeadm control plane on the primary host."""

    section: ClassVar[str] = "delta"

    # "recipe": Kubernetes built by the suite from Debian bookworm's source package (1.20.2,
    # the only route where no upstream artifact is reachable); "release": the pinned upstream
    # release below. "auto": recipe where the profile waives upstream-artifacts.
    source: Literal["auto", "recipe", "release"] = "auto"
    # The current release the suite pins (binaries' sha256 in [artifacts], see
    # settings/hetzner.example.toml and docs/teams/delta.md).
    release: KubernetesRelease = KubernetesRelease(version="1.35.1")
    # "external": Debian's etcd-server on the host, TLS between it and the API server;
    # "stacked": kubeadm's static etcd pod. "auto": external with the recipe (no etcd image
    # exists for it), stacked with a release.
    etcd: Literal["auto", "external", "stacked"] = "auto"
    # etcd-server, and etcdctl for the health checks.
    etcd_packages: list[str] = ["etcd-server", "etcd-client"]
    cluster_name: str = Field("hvsuite", pattern=r"^[a-z][a-z0-9-]{0,40}$")
    pod_subnet: CIDR = "10.244.0.0/16"
    service_subnet: CIDR = "10.96.0.0/12"
    # The operator's copy of the admin kubeconfig on the controller (mode 0600).
    # {host} is the primary host's name.
    kubeconfig: str = "~/.kube/hvsuite-{host}.conf"
    # Bound on "kubeadm init" to API server healthy and on node Ready.
    ready_timeout: float = Field(300.0, gt=0)
    # Where the test pod's image goes: the suite's registry (Bravo's, port "oci-registry").
    test_repository: str = Field("hvsuite/pod-marker", pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$")

    def resolved_source(self, profile: EffectiveProfile) -> Literal["recipe", "release"]:
        if self.source == "auto":
            return "recipe" if profile.waives(Waiver.UPSTREAM_ARTIFACTS) else "release"
        return self.source

    def resolved_etcd(self, profile: EffectiveProfile) -> Literal["external", "stacked"]:
        if self.etcd == "auto":
            return "external" if self.resolved_source(profile) == "recipe" else "stacked"
        return self.etcd
