"""The settings of Team Delta (the config's [delta] section): the Kubernetes control plane.

Also the helpers later teams' cross-section rules share (`configured_profile`,
`undeclared_listeners`, `unversioned_pins`): a listener a component opens beyond loopback
must be declared in ``[[ports]]``, and a pin must name the version it claims in its URL."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from settings.base import CIDR, EffectiveProfile, Role, Strict, TeamSettings, Waiver


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
    # kubeadm's MinExternalEtcdVersion (cmd/kubeadm/app/constants/constants.go) for this
    # release: with delta.etcd = "external" the etcd the host's packages give must be at least
    # this, checked on the host before anything is installed (docs/production.md).
    min_external_etcd: str = Field("3.5.24", pattern=r"^\d+\.\d+\.\d+$")

    @property
    def binaries(self) -> tuple[str, ...]:
        """The [artifacts] keys of every binary a node gets."""
        return (self.kubeadm, self.kubelet, self.kubectl, self.crictl)


@dataclass(frozen=True)
class Listener:
    """A socket a component opens beyond loopback, as its [[ports]] declaration would be."""

    name: str
    port: int
    proto: Literal["tcp", "udp"]
    # Who opens it, for the message.
    what: str


def configured_profile(config: Any) -> EffectiveProfile:
    """The profile a run of this config uses when no --target overrides its hosts: the one
    it names, else "production" where the primary host is reached over ssh, else "scratch"
    (what targets.inventory.effective_profile decides from the planned hosts)."""
    if config.target.profile is not None:
        return config.effective_profile(config.target.profile)
    primary = config.hosts_with(Role.PRIMARY) or list(config.hosts)
    wanted = "production" if primary and all(host.ssh for host in primary) else "scratch"
    return config.effective_profile(wanted if wanted in config.profiles else "production")


def pinned(config: Any, keys: Iterable[str]) -> bool:
    """Whether every one of these [artifacts] keys is pinned (the component will be fetched)."""
    return all(key in config.artifacts for key in keys)


def undeclared_listeners(config: Any, team: str, listeners: Iterable[Listener]) -> list[str]:
    """One problem per listener `team` does not declare in [[ports]] (by port and protocol):
    the firewall, Alpha's scan and Echo-1's "no undeclared listener" check read only the
    declarations, so what runs must be declared."""
    declared = {(rule.port, rule.proto) for rule in config.ports_of(team)}
    return [
        f"ports: {item.what} listens on {item.port}/{item.proto} beyond loopback, and team {team} "
        f'declares no such port. Fix: add [[ports]] with name = "{item.name}", team = "{team}", '
        f'port = {item.port}, proto = "{item.proto}" and its sources ([] = no one outside the host)'
        for item in listeners
        if (item.port, item.proto) not in declared
    ]


def unversioned_pins(config: Any, keys: Iterable[str]) -> list[str]:
    """One problem per pin whose URL does not name the version the pin claims: a version bumped
    without its URL (or the other way round) would fetch a file the checksum is not of."""
    problems = []
    for key in keys:
        pin = config.artifacts.get(key)
        if pin is not None and pin.version.removeprefix("v") not in pin.url:
            problems.append(
                f"artifacts.{key}: version {pin.version} does not appear in its url {pin.url}. Fix: "
                "make url, version and sha256 name the same release (see docs/production.md)"
            )
    return problems


# Stacked etcd (kubeadm's static pod) serves clients and peers on the advertise address
# (metrics stay on 127.0.0.1:2381), and so does external etcd once members on other hosts
# join it (the etcd_clustered extension point); kubelet's API is the API server's way in.
# kube-proxy's health and metrics, the scheduler's and the controller manager's ports are on
# loopback.
RELEASE_LISTENERS = (Listener("kubelet", 10250, "tcp", "kubelet's API"),)
ETCD_LISTENERS = (
    Listener("etcd-client", 2379, "tcp", "etcd (clients)"),
    Listener("etcd-peer", 2380, "tcp", "etcd (peers)"),
)


class DeltaSettings(TeamSettings):
    """Team Delta: a kubeadm control plane on the primary host."""

    section: ClassVar[str] = "delta"

    # "recipe": Kubernetes built by the suite from Debian bookworm's source package (1.20.2,
    # the only route where no upstream artifact is reachable); "release": the pinned upstream
    # release below. "auto": recipe where the profile waives upstream-artifacts.
    source: Literal["auto", "recipe", "release"] = "auto"
    # The current release the suite pins (binaries' sha256 in [artifacts], see
    # settings/hetzner.example.toml and docs/teams/delta.md).
    release: KubernetesRelease = KubernetesRelease(version="1.36.4")
    # "external": Debian's etcd-server on the host, TLS between it and the API server;
    # "stacked": kubeadm's static etcd pod. "auto": external with the recipe (no etcd image
    # exists for it), stacked with a release.
    etcd: Literal["auto", "external", "stacked"] = "auto"
    # etcd-server (the first: its version is checked against release.min_external_etcd),
    # and etcdctl for the health checks.
    etcd_packages: list[str] = ["etcd-server", "etcd-client"]
    # kubelet refuses to start while swap is on (failSwapOn, 1.20 and current releases alike).
    # "off": Delta turns swap off on the host and keeps it off across reboots (a host whose
    # kernel is shared, profiles.<name>.namespaced_sysctls_only, must already have none);
    # "allow": kubelet is configured to run with swap on (failSwapOn false; pods get none).
    swap: Literal["off", "allow"] = "off"
    cluster_name: str = Field("hvsuite", pattern=r"^[a-z][a-z0-9-]{0,40}$")
    pod_subnet: CIDR = "10.244.0.0/16"
    service_subnet: CIDR = "10.96.0.0/12"
    # The operator's copy of the admin kubeconfig on the controller (mode 0600).
    # {host} is the primary host's name.
    kubeconfig: str = "~/.kube/hvsuite-{host}.conf"
    # Bound on "kubeadm init"'s wait for the control plane (1.20: the API server's health;
    # v1beta4 releases: each control-plane component's) and on node Ready.
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

    def problems_with(self, config: Any) -> list[str]:
        # Judged for the release the config pins; without its binaries pinned a run stops at
        # the first fetch anyway, naming the missing pin.
        profile = configured_profile(config)
        if self.resolved_source(profile) != "release" or not pinned(config, self.release.binaries):
            return []
        problems = unversioned_pins(config, self.release.binaries)
        problems += [
            f"artifacts.{key}: version {config.artifacts[key].version}, but delta.release.version is "
            f"{self.release.version}. Fix: pin the {key} of release {self.release.version} (kubespray's "
            "checksums.yml has its sha256; see docs/production.md)"
            for key in (self.release.kubeadm, self.release.kubelet, self.release.kubectl)
            if config.artifacts[key].version != self.release.version
        ]
        listeners = list(RELEASE_LISTENERS)
        # Imported here: the extension registry is built from the composed config's sections.
        from apply.extensions import hooks

        if self.resolved_etcd(profile) == "stacked" or hooks().etcd_clustered(settings=config):
            listeners += ETCD_LISTENERS
        return problems + undeclared_listeners(config, "Delta", listeners)
