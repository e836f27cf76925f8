"""The suite's one validated configuration: targets, profiles and waivers, versions and
artifact pins, declared ports, and each team's policy.

Every section has defaults that build the embedded scratch target; an operator's file
(`settings/hetzner.example.toml`) overrides what differs. Each team owns one section class
below; nothing else in the suite hard-codes versions, ports, CIDRs or tenants.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    # An unknown key is a typo an operator wants to hear about, not a silently ignored line.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Waiver(StrEnum):
    """Capabilities a target profile may declare it cannot have."""

    KVM = "kvm"
    DEVMAPPER = "devmapper"
    UPSTREAM_ARTIFACTS = "upstream-artifacts"
    # A Kubernetes pod network that enforces NetworkPolicy (a CNI such as Calico or Cilium).
    NETPOL_ENFORCEMENT = "netpol-enforcement"
    # CSI volume snapshots (the snapshot controller and a snapshot-capable CSI driver).
    CSI_SNAPSHOTS = "csi-snapshots"


class Role(StrEnum):
    """What a host of the inventory is for. Teams ask for hosts by role (phases/plan.toml)."""

    # The hypervisor host every single-host team builds (the plan's one server).
    PRIMARY = "primary"
    # A second host for outside-in checks: port scans from a non-admin address, the
    # fail2ban ban drill.
    PROBE = "probe"
    CONTROL_PLANE = "control-plane"
    WORKER = "worker"
    # A backup repository, and a host a backup is restored onto.
    BACKUP = "backup"
    RESTORE = "restore"
    # Central log aggregation.
    LOGS = "logs"
    # The far end of network benchmarks.
    BENCH_PEER = "bench-peer"


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR (write it like 203.0.113.0/24 or 2001:db8::/32)") from exc


CIDR = Annotated[str, AfterValidator(_cidr)]


class Profile(Strict):
    """What a kind of target cannot provide, and how it must be treated. A check needing a
    waived capability is skipped with the waiver's name; a profile with no waivers runs
    every check."""

    waivers: frozenset[Waiver] = frozenset()
    # Global sysctls (vm.*, kernel.*) change the machine a container-based target shares
    # with its host; such targets keep host tuning to namespaced net.* keys.
    namespaced_sysctls_only: bool = False
    # containerd inside a container-based target lacks CAP_SYS_RESOURCE: runc then fails
    # with "can't get final child's PID from pipe: EOF" unless containers may not lower
    # their OOM score below containerd's.
    restrict_oom_score_adj: bool = False


@dataclass(frozen=True)
class EffectiveProfile:
    """The one profile in force for a run (named in the config, or chosen by the kind of the
    primary host). Steps ask it for capabilities; nothing asks "is this scratch?"."""

    name: str
    waivers: frozenset[Waiver]
    namespaced_sysctls_only: bool
    restrict_oom_score_adj: bool

    def waives(self, capability: Waiver | str) -> bool:
        return Waiver(capability) in self.waivers

    def __str__(self) -> str:
        return self.name


class TargetSettings(Strict):
    # Waivers in force. Left unset, a run whose primary host is a scratch server uses
    # "scratch", one whose primary is an ssh host "production" (waives nothing).
    profile: str | None = None


class HostSettings(Strict):
    """One host of the inventory and the roles it holds (one host may hold several)."""

    # Scratch servers are named "<scratch.name>-<name>"; an ssh host keeps this name in logs.
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    roles: list[Role] = Field(min_length=1)
    # How to reach it: ssh://user@host[:port] or an alias from ~/.ssh/config. Unset: a local
    # scratch server the suite creates on its podman network.
    ssh: str | None = None

    @field_validator("roles")
    @classmethod
    def _unique_roles(cls, roles: list[Role]) -> list[Role]:
        if len(set(roles)) != len(roles):
            raise ValueError(f"roles {', '.join(roles)} name a role twice")
        return roles


class SSHSettings(Strict):
    user: str = "root"
    # Private key for ssh targets; scratch servers get a key the suite generates.
    key: Path | None = None
    port: int = Field(22, ge=1, le=65535)
    config_file: Path = Path("~/.ssh/config")
    connect_timeout: float = Field(10.0, gt=0)
    # Host keys of ssh targets are checked against this file (plus UserKnownHostsFile of an
    # ssh config alias). strict_host_keys = false accepts and records an unknown host's key on
    # first use (OpenSSH's accept-new); a changed key is refused either way.
    known_hosts: Path = Path("~/.ssh/known_hosts")
    strict_host_keys: bool = True


class ScratchSettings(Strict):
    name: str = Field("hvs-scratch", pattern=r"^[a-z][a-z0-9-]{1,40}$")
    network: str = Field("hvsuite", pattern=r"^[a-z][a-z0-9-]{1,40}$")
    subnet: CIDR = "10.231.0.0/24"
    # Addresses of the subnet never given to a server (the load balancer's pool lives here).
    keep_free: list[CIDR] = []
    image: str = "localhost/hvsuite-scratch:bookworm"
    suite: str = "bookworm"
    mirror: str = Field("http://deb.debian.org/debian", pattern=r"^https?://")
    # Bound on create-to-SSH-ready (about 1 s is normal; a cold image build is not counted).
    ready_timeout: float = Field(90.0, gt=0, le=1800)


class ArtifactPin(Strict):
    """A download that does not come from the OS package manager."""

    version: str
    url: str = Field(pattern=r"^(https?|file)://")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # Path of the wanted file inside a .tgz/.tar.gz, if the download is an archive.
    member: str | None = None
    # Where the file is installed on the target.
    dest: str
    mode: str = Field("0755", pattern=r"^0[0-7]{3}$")

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower() if isinstance(value, str) else value


class PortRule(Strict):
    """One port a team opens. The firewall is derived from these declarations only."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    team: str
    port: int = Field(ge=1, le=65535)
    proto: Literal["tcp", "udp"] = "tcp"
    # "world", "admin" (firewall.admin_sources) or CIDRs; [] is no one outside the host.
    sources: list[str] = ["admin"]

    @field_validator("sources")
    @classmethod
    def _sources(cls, values: list[str]) -> list[str]:
        return [v if v in ("world", "admin") else _cidr(v) for v in values]


class FirewallSettings(Strict):
    # Where the operator (and the suite's controller) reach the hosts from: the sources of
    # every port declared "admin". Required as soon as an "admin" port is declared.
    admin_sources: list[CIDR] = []


class TLSSettings(Strict):
    cert_dir: str = "/etc/flintlock/certs"
    ca_days: int = Field(3650, ge=30)
    cert_days: int = Field(365, ge=7)
    # Re-issue the server certificate when it expires within this many days.
    renew_before_days: int = Field(30, ge=1)
    key_type: Literal["rsa4096", "ec-p256"] = "ec-p256"
    # Names or IPs added to the server certificate's SANs (hostname and the IP of the
    # default route are always in).
    extra_sans: list[str] = []
    # Mutual TLS: flintlockd accepts only clients with a certificate from the suite's CA
    # (a client certificate is issued next to the server's for the operator and CAPI).
    client_auth: bool = True

    @model_validator(mode="after")
    def _renew_window(self) -> TLSSettings:
        if self.renew_before_days >= self.cert_days:
            raise ValueError(
                f"alpha.tls.renew_before_days ({self.renew_before_days}) must be below cert_days "
                f"({self.cert_days}), or every run re-issues the certificate"
            )
        return self


class SSHHardening(Strict):
    # dev-sec ssh-hardening's modern set, limited to what OpenSSH 9.2 (Debian 12) and
    # 9.6 (Ubuntu 24.04) both offer.
    kex: list[str] = [
        "sntrup761x25519-sha512@openssh.com",
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group18-sha512",
        "diffie-hellman-group-exchange-sha256",
    ]
    ciphers: list[str] = [
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-ctr",
        "aes192-ctr",
        "aes128-ctr",
    ]
    macs: list[str] = [
        "hmac-sha2-512-etm@openssh.com",
        "hmac-sha2-256-etm@openssh.com",
        "umac-128-etm@openssh.com",
    ]
    host_key_types: list[Literal["ed25519", "rsa", "ecdsa"]] = Field(["ed25519", "rsa"], min_length=1)
    permit_root_login: Literal["prohibit-password", "no"] = "prohibit-password"
    # dev-sec disables TCP forwarding; an operator tunnelling to a dashboard turns it on.
    allow_tcp_forwarding: bool = False
    login_grace_time: int = Field(30, ge=5, le=600)
    max_auth_tries: int = Field(3, ge=1, le=10)
    client_alive_interval: int = Field(300, ge=0)
    client_alive_count_max: int = Field(2, ge=0)


class Fail2banSettings(Strict):
    maxretry: int = Field(5, ge=1)
    findtime: str = Field("10m", pattern=r"^\d+[smhd]?$")
    bantime: str = Field("1h", pattern=r"^\d+[smhd]?$")
    # Never ban these (the operator's own network), as CIDRs.
    ignoreip: list[CIDR] = []
    # Also never ban the address the suite manages the host from (read from the SSH
    # session): a run's own probes must not lock the suite out for bantime.
    ignore_controller: bool = True


class AlphaSettings(Strict):
    tls: TLSSettings = TLSSettings()
    ssh: SSHHardening = SSHHardening()
    fail2ban: Fail2banSettings = Fail2banSettings()
    # Dead man's switch for SSH and firewall changes: the host restores the previous
    # configuration after this many seconds unless a new login was proven.
    guard_seconds: int = Field(120, ge=30, le=1800)
    # unattended-upgrades with apt's periodic timers (security updates only).
    unattended_upgrades: bool = True
    # Network sysctls an auditor expects (all namespaced net.*).
    sysctls: dict[str, str] = {
        "net.ipv4.conf.all.rp_filter": "1",
        "net.ipv4.conf.default.rp_filter": "1",
        "net.ipv4.conf.all.accept_redirects": "0",
        "net.ipv4.conf.default.accept_redirects": "0",
        "net.ipv4.conf.all.send_redirects": "0",
        "net.ipv4.conf.default.send_redirects": "0",
        "net.ipv4.conf.all.accept_source_route": "0",
        "net.ipv4.conf.default.accept_source_route": "0",
        "net.ipv4.conf.all.log_martians": "1",
        "net.ipv4.tcp_syncookies": "1",
        "net.ipv4.icmp_echo_ignore_broadcasts": "1",
        "net.ipv6.conf.all.accept_redirects": "0",
        "net.ipv6.conf.default.accept_redirects": "0",
        "net.ipv6.conf.all.accept_source_route": "0",
    }


class BaseSettings(Strict):
    # Parent interface for flintlock's macvtap/tap devices; empty = detect the default route's.
    parent_iface: str = Field("", pattern=r"^[A-Za-z0-9_.@-]{0,15}$")
    bridge: str = Field("flkbr0", pattern=r"^[A-Za-z0-9_.-]{1,15}$")
    # Must match the port declared as "flintlock-grpc" in [[ports]].
    grpc_port: int = Field(9090, ge=1, le=65535)
    microvm_boot_timeout: float = Field(60.0, gt=0)
    # Keys into [artifacts] installed by Base. Each needs version, url, sha256 and dest.
    firecracker: str = "firecracker"
    cloud_hypervisor: str = "cloud-hypervisor"
    flintlockd: str = "flintlockd"
    microvm_kernel: str = "microvm-kernel"
    microvm_rootfs: str = "microvm-rootfs"
    # Text on the microVM's serial console that proves the guest's userspace came up.
    microvm_boot_marker: str = Field("login:", min_length=3)
    microvm_boot_args: str = "console=ttyS0 reboot=k panic=1 pci=off"
    containerd_socket: str = "/run/containerd/containerd.sock"
    state_dir: str = "/var/lib/flintlock"


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


class BravoSettings(Strict):
    """Team Bravo: containerd, runc and CNI plugins from the OS archive, one managed config."""

    packages: list[str] = ["containerd", "runc", "containernetworking-plugins"]
    config_path: str = "/etc/containerd/config.toml"
    # kubelet (Team Delta) runs with the systemd cgroup driver; runc must match.
    systemd_cgroup: bool = True
    snapshotter: Literal["overlayfs", "native"] = "overlayfs"
    # Debian and Ubuntu install the CNI plugins here (not upstream's /opt/cni/bin).
    cni_bin_dir: str = "/usr/lib/cni"
    cni_conf_dir: str = "/etc/cni/net.d"
    # The pod sandbox image; None: the pause image of Team Delta's Kubernetes (the one kubeadm
    # names for its version).
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


class GrafanaSettings(Strict):
    """Grafana from its pinned upstream .deb (not in Debian/Ubuntu archives)."""

    # Key of the pin in [artifacts]: version, url, sha256 and dest (a .deb path on the target).
    artifact: str = "grafana"
    admin_user: str = Field("admin", pattern=r"^[a-z][a-z0-9_-]*$")
    # The generated admin password is kept on the target, readable by root only.
    admin_password_file: str = "/etc/grafana/hvsuite-admin-password"
    datasource_uid: str = Field("hvsuite-prometheus", pattern=r"^[a-zA-Z0-9_-]{1,40}$")
    dashboard_uid: str = Field("hvsuite-host", pattern=r"^[a-zA-Z0-9_-]{1,40}$")


class CharlieSettings(Strict):
    """Team Charlie: Prometheus and node_exporter from the OS archive, Grafana pinned.
    Their ports are the rules named prometheus, node-exporter and grafana in [[ports]]."""

    prometheus_package: str = "prometheus"
    node_exporter_package: str = "prometheus-node-exporter"
    scrape_interval: str = Field("15s", pattern=r"^[1-9][0-9]*(ms|s|m)$")
    evaluation_interval: str = Field("15s", pattern=r"^[1-9][0-9]*(ms|s|m)$")
    retention: str = Field("15d", pattern=r"^[1-9][0-9]*[hdwy]$")
    # Label every series with the host's role so dashboards and alerts can select it.
    external_labels: dict[str, str] = {"role": "hypervisor"}
    grafana: GrafanaSettings = GrafanaSettings()


class KubernetesRelease(Strict):
    """An upstream Kubernetes release: binaries from dl.k8s.io, images from registry.k8s.io.
    The sha256 pins are the official ones (see docs/kubernetes.md for where each came from)."""

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


class DeltaSettings(Strict):
    """Team Delta: a kubeadm control plane on the primary host."""

    # "recipe": Kubernetes built by the suite from Debian bookworm's source package (1.20.2,
    # the only route where no upstream artifact is reachable); "release": the pinned upstream
    # release below. "auto": recipe where the profile waives upstream-artifacts.
    source: Literal["auto", "recipe", "release"] = "auto"
    # The current release the suite pins (binaries' sha256 in [artifacts], see
    # settings/hetzner.example.toml and docs/kubernetes.md).
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


LabelMap = dict[
    Annotated[str, Field(pattern=r"^[A-Za-z0-9./_-]{1,253}$")], Annotated[str, Field(max_length=63)]
]
K8sName = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]


class PolicyAllow(Strict):
    """One explicit allow on top of a namespace's default deny: a NetworkPolicy selecting
    ``pods`` of ``namespace`` and letting ``peers`` reach them (ingress) or be reached by
    them (egress) on ``ports``."""

    name: K8sName
    namespace: K8sName
    direction: Literal["ingress", "egress"] = "ingress"
    # matchLabels of the pods the allow is for; {} is every pod of the namespace.
    pods: LabelMap = {}
    # "namespace": pods of the same namespace; "cluster": pods of every namespace;
    # "world": any address; or CIDRs.
    peers: list[str] = Field(min_length=1)
    # TCP ports; [] is every port.
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = []

    @field_validator("peers")
    @classmethod
    def _peers(cls, values: list[str]) -> list[str]:
        return [v if v in ("namespace", "cluster", "world") else _cidr(v) for v in values]


class NetworkPolicySettings(Strict):
    # Namespaces the suite creates with a default-deny policy (ingress and egress); pods
    # there talk only as an allow below says.
    namespaces: list[K8sName] = ["hvsuite-apps"]
    allow: list[PolicyAllow] = []

    @model_validator(mode="after")
    def _allows_in_managed_namespaces(self) -> NetworkPolicySettings:
        problems = [
            f"echo1.network_policies.allow {rule.name!r} is for namespace {rule.namespace!r}, which is not "
            f"in echo1.network_policies.namespaces ({', '.join(self.namespaces) or 'none'}): add it there"
            for rule in self.allow
            if rule.namespace not in self.namespaces
        ]
        names = [(rule.namespace, rule.name) for rule in self.allow]
        problems += [
            f"echo1.network_policies.allow names {n!r} twice in {ns!r}"
            for ns, n in set(names)
            if names.count((ns, n)) > 1
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self


class PodNetworkSettings(Strict):
    # "bridge": Debian's CNI plugins as one chain (bridge, host-local, portmap, bandwidth,
    # loopback), which enforces no NetworkPolicy; "calico": the pinned Calico manifest
    # (enforces NetworkPolicy). "auto": calico where upstream artifacts can be had.
    plugin: Literal["auto", "bridge", "calico"] = "auto"
    # The Linux bridge of the "bridge" plugin, the pods' gateway on the node.
    bridge: str = Field("cni0", pattern=r"^[A-Za-z0-9_.-]{1,15}$")
    # Key into [artifacts] of Calico's manifest (calico.yaml; a member of the release's
    # source archive is fine: see settings/hetzner.example.toml).
    calico_manifest: str = "calico-manifest"

    def resolved_plugin(self, profile: EffectiveProfile) -> Literal["bridge", "calico"]:
        if self.plugin == "auto":
            return "bridge" if profile.waives(Waiver.UPSTREAM_ARTIFACTS) else "calico"
        return self.plugin


class LoadBalancerSettings(Strict):
    # "keepalived-haproxy": keepalived holds the pool's addresses on the host and HAProxy
    # forwards each to its Service (Debian packages); "metallb": the pinned MetalLB manifest
    # announcing the pool (L2). "auto": metallb where upstream artifacts can be had.
    implementation: Literal["auto", "keepalived-haproxy", "metallb"] = "auto"
    # The addresses Services of type LoadBalancer get (the server's additional IPs in
    # production; free addresses of scratch.subnet on scratch).
    pool: list[CIDR] = []
    # The ports a load-balanced Service may expose: names of Team Echo-1's [[ports]] (their
    # sources are who may reach the addresses). A Service with another port gets no address.
    ports: list[str] = []
    # The interface keepalived puts the addresses on; "" = the default route's.
    interface: str = Field("", pattern=r"^[A-Za-z0-9_.@-]{0,15}$")
    # VRRP's virtual router id: unique among the keepalived instances of one network.
    vrrp_router_id: int = Field(51, ge=1, le=255)
    # How often the address allocator reconciles Services (keepalived-haproxy).
    sync_seconds: int = Field(3, ge=1, le=300)
    # Key into [artifacts] of MetalLB's manifest (metallb-native.yaml).
    metallb_manifest: str = "metallb-manifest"

    def resolved_implementation(self, profile: EffectiveProfile) -> Literal["keepalived-haproxy", "metallb"]:
        if self.implementation == "auto":
            return "keepalived-haproxy" if profile.waives(Waiver.UPSTREAM_ARTIFACTS) else "metallb"
        return self.implementation

    def addresses(self) -> list[str]:
        """Every address of the pool, in order."""
        return [str(ip) for net in self.pool for ip in ipaddress.ip_network(net)]


class Echo1Settings(Strict):
    """Team Echo-1: the pod network, network policies and the load balancer."""

    pod_network: PodNetworkSettings = PodNetworkSettings()
    network_policies: NetworkPolicySettings = NetworkPolicySettings()
    load_balancer: LoadBalancerSettings = LoadBalancerSettings()
    # The bandwidth cap the pod network's check puts on a pod (kubernetes.io/ingress-bandwidth).
    check_bandwidth: str = Field("8M", pattern=r"^[1-9][0-9]*[KMG]$")


_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_ACCESS_MODES = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]


class StorageVolume(Strict):
    """One static PersistentVolume and the host directory (or logical volume) behind it."""

    # The PV's name, the directory's name under echo2.root and, with LVM, the LV's name.
    name: str = Field(pattern=_DNS_LABEL)
    # Kubernetes' binary units only: an LV is sized in the same unit (LVM's M/G/T are binary).
    size: str = Field("1Gi", pattern=r"^[1-9][0-9]*(Mi|Gi|Ti)$")
    access_modes: list[_ACCESS_MODES] = Field(["ReadWriteOnce"], min_length=1)

    @field_validator("access_modes")
    @classmethod
    def _unique_modes(cls, modes: list[str]) -> list[str]:
        if len(set(modes)) != len(modes):
            raise ValueError(f"access_modes {', '.join(modes)} name a mode twice")
        return modes


class Echo2Settings(Strict):
    """Team Echo-2: host storage, the default StorageClass, PersistentVolumes, snapshots."""

    # "directories": one plain directory per volume under `root`. "lvm": a volume group on
    # `devices`, one ext4 LV per volume mounted at its directory (through /etc/fstab).
    # "auto": lvm where the profile does not waive devmapper, else directories.
    layout: Literal["auto", "directories", "lvm"] = "auto"
    # Holds the volumes' directories (mount points with LVM); root only (0700): a pod sees
    # its volume through kubelet's bind mount, never through this path.
    root: str = Field("/srv/hvsuite-volumes", pattern=r"^/[A-Za-z0-9_./-]+$")
    # A volume's own directory: the suite's pods run busybox as root, so root:root 0700 is
    # all they need; never world-writable.
    volume_mode: str = Field("0700", pattern=r"^0[0-7]{3}$")
    volumes: list[StorageVolume] = [
        StorageVolume(name="hvsuite-pv-0"),
        StorageVolume(name="hvsuite-pv-1"),
        StorageVolume(name="hvsuite-pv-2"),
    ]
    # LVM only: the volume group and the block devices it is made of (whole disks or
    # partitions the operator gives up to it; a device in another VG is refused).
    volume_group: str = Field("hvsuite-volumes", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,126}$")
    devices: list[str] = []
    # The default StorageClass. Static local PVs: no provisioner, and binding waits for the
    # first pod, so the scheduler puts that pod on the volume's node.
    storage_class: str = Field("hvsuite-local", pattern=_DNS_LABEL)
    # What happens to a PV's data once its claim is deleted. "Retain": the PV is Released
    # and the data stays until an operator clears it. "Delete" needs a provisioner (or a
    # CSI driver) to delete the volume; kubernetes.io/no-provisioner has none, so a local PV
    # would fail to be deleted and stay Failed: refused below. ("Recycle" is deprecated and
    # only ever worked for NFS and hostPath.)
    reclaim_policy: Literal["Retain", "Delete"] = "Retain"
    # Bound on a claim binding and on a check pod finishing.
    bind_timeout: float = Field(180.0, gt=0, le=1800)
    # Where the checks' pod image goes (the suite's registry, Bravo's port "oci-registry").
    test_repository: str = Field("hvsuite/volume-check", pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$")
    # Volume snapshots, where the profile does not waive csi-snapshots: [artifacts] keys of
    # pinned manifests, applied in this order. First the snapshot.storage.k8s.io CRDs
    # (external-snapshotter's client/config/crd), then the snapshot controller (its RBAC and
    # Deployment) and a snapshot-capable CSI driver: csi-driver-host-path's plugin and
    # CSIDriver object, with the RBAC of its sidecars (each from its own repository, as the
    # driver's deploy script takes them).
    snapshot_crds: list[str] = [
        "snapshot-crd-volumesnapshotclasses",
        "snapshot-crd-volumesnapshotcontents",
        "snapshot-crd-volumesnapshots",
    ]
    snapshot_components: list[str] = [
        "snapshot-controller-rbac",
        "snapshot-controller",
        "csi-provisioner-rbac",
        "csi-attacher-rbac",
        "csi-snapshotter-rbac",
        "csi-resizer-rbac",
        "csi-health-monitor-rbac",
        "csi-hostpath-driverinfo",
        "csi-hostpath-plugin",
    ]
    # The CSI driver's name (its CSIDriver object) and the classes the suite renders for it:
    # a StorageClass provisioning on it (snapshots exist for CSI volumes only) and the
    # VolumeSnapshotClass.
    csi_driver: str = Field("hostpath.csi.k8s.io", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    csi_storage_class: str = Field("hvsuite-csi-hostpath", pattern=_DNS_LABEL)
    snapshot_class: str = Field("hvsuite-snapshots", pattern=_DNS_LABEL)
    # "Delete": deleting a VolumeSnapshot deletes the driver's snapshot too.
    snapshot_deletion_policy: Literal["Delete", "Retain"] = "Delete"

    @field_validator("reclaim_policy")
    @classmethod
    def _reclaimable(cls, value: str) -> str:
        if value == "Delete":
            raise ValueError(
                'echo2.reclaim_policy = "Delete" cannot work: the StorageClass has no provisioner '
                "(kubernetes.io/no-provisioner), so nothing deletes a local volume and the PV would "
                'end Failed; use "Retain" (the data stays until an operator clears it)'
            )
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, devices: list[str]) -> list[str]:
        problems = [d for d in devices if not re.fullmatch(r"/dev/[A-Za-z0-9_./-]+", d)]
        if problems:
            raise ValueError(f"echo2.devices: {', '.join(map(repr, problems))} are not /dev/ paths")
        if len(set(devices)) != len(devices):
            raise ValueError("echo2.devices names a device twice")
        return devices

    @model_validator(mode="after")
    def _distinct(self) -> Echo2Settings:
        names = [volume.name for volume in self.volumes]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"echo2.volumes: the name {', '.join(twice)} is used twice")
        if self.layout == "lvm" and not self.devices:
            raise ValueError(
                'echo2.layout = "lvm" needs echo2.devices (the block devices of the volume group)'
            )
        return self

    def resolved_layout(self, profile: EffectiveProfile) -> Literal["directories", "lvm"]:
        if self.layout == "auto":
            return "directories" if profile.waives(Waiver.DEVMAPPER) else "lvm"
        return self.layout

    def volume_dir(self, volume: StorageVolume) -> str:
        return f"{self.root.rstrip('/')}/{volume.name}"


class SignalSettings(Strict):
    # Optional chat webhook (Slack/Mattermost/Discord-compatible JSON {"text": ...}).
    webhook_url: str | None = Field(None, pattern=r"^https?://")
    timeout: float = Field(5.0, gt=0, le=60)


class Settings(Strict):
    target: TargetSettings = TargetSettings()
    ssh: SSHSettings = SSHSettings()
    scratch: ScratchSettings = ScratchSettings()
    profiles: dict[str, Profile] = {
        # Exactly what a podman scratch server on this kind of machine cannot provide.
        "scratch": Profile(
            waivers=frozenset(
                {
                    Waiver.KVM,
                    Waiver.DEVMAPPER,
                    Waiver.UPSTREAM_ARTIFACTS,
                    Waiver.NETPOL_ENFORCEMENT,
                    Waiver.CSI_SNAPSHOTS,
                }
            ),
            namespaced_sysctls_only=True,
            restrict_oom_score_adj=True,
        ),
        "production": Profile(),
    }
    # The inventory: the hosts and the roles they hold.
    hosts: list[HostSettings] = []
    artifacts: dict[str, ArtifactPin] = {}
    # Every port a team opens, with who may reach it; the firewall is derived from these.
    ports: list[PortRule] = []
    firewall: FirewallSettings = FirewallSettings()
    base: BaseSettings = BaseSettings()
    alpha: AlphaSettings = AlphaSettings()
    bravo: BravoSettings = BravoSettings()
    charlie: CharlieSettings = CharlieSettings()
    delta: DeltaSettings = DeltaSettings()
    echo1: Echo1Settings = Echo1Settings()
    echo2: Echo2Settings = Echo2Settings()
    signals: SignalSettings = SignalSettings()

    @field_validator("ports")
    @classmethod
    def _distinct_ports(cls, ports: list[PortRule]) -> list[PortRule]:
        # A field validator, so a clash is reported together with every other problem.
        problems = []
        seen: dict[tuple[int, str], str] = {}
        names: dict[tuple[str, str], int] = {}
        for rule in ports:
            key = (rule.port, rule.proto)
            if key in seen:
                problems.append(
                    f"{rule.port}/{rule.proto} is declared by both {seen[key]!r} and {rule.name!r}; "
                    "give one of them another port"
                )
            seen.setdefault(key, rule.name)
            if (rule.team, rule.name) in names:
                problems.append(f"team {rule.team} declares the port name {rule.name!r} twice")
            names[(rule.team, rule.name)] = rule.port
        if problems:
            raise ValueError("; ".join(problems))
        return ports

    @field_validator("hosts")
    @classmethod
    def _inventory(cls, hosts: list[HostSettings]) -> list[HostSettings]:
        problems = []
        names = [host.name for host in hosts]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"host name {name!r} is used twice")
        primary = [host.name for host in hosts if Role.PRIMARY in host.roles]
        if len(primary) > 1:
            problems.append(
                f"role 'primary' is held by {', '.join(primary)}; the hypervisor host is one server "
                "(more nodes take the roles control-plane and worker)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return hosts

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.target.profile is not None and self.target.profile not in self.profiles:
            known = ", ".join(sorted(self.profiles))
            raise ValueError(f"target.profile {self.target.profile!r} is not defined; use one of: {known}")
        if any("admin" in rule.sources for rule in self.ports) and not self.firewall.admin_sources:
            admin = ", ".join(rule.name for rule in self.ports if "admin" in rule.sources)
            raise ValueError(
                f"firewall.admin_sources is empty, but ports {admin} are admin-only: set it to the "
                'operator\'s CIDRs, for example admin_sources = ["203.0.113.0/24"]'
            )
        self._check_load_balancer()
        return self

    def _check_load_balancer(self) -> None:
        balancer = self.echo1.load_balancer
        subnet = ipaddress.ip_network(self.scratch.subnet)
        kept = [ipaddress.ip_network(net) for net in self.scratch.keep_free]
        for net in map(ipaddress.ip_network, balancer.pool):
            if (
                net.version == subnet.version
                and net.subnet_of(subnet)
                and not any(net.subnet_of(k) for k in kept)
            ):  # type: ignore[arg-type]
                raise ValueError(
                    f"echo1.load_balancer.pool {net} lies in scratch.subnet {subnet}, where scratch servers "
                    f'get addresses: add it to scratch.keep_free (keep_free = ["{net}"])'
                )

    def effective_profile(self, name: str) -> EffectiveProfile:
        """The named profile as the one object a run passes around."""
        profile = self.profiles[name]
        return EffectiveProfile(
            name, profile.waivers, profile.namespaced_sysctls_only, profile.restrict_oom_score_adj
        )

    def hosts_with(self, role: Role | str) -> list[HostSettings]:
        return [host for host in self.hosts if Role(role) in host.roles]

    def ports_of(self, team: str) -> list[PortRule]:
        return [rule for rule in self.ports if rule.team == team]

    def port(self, team: str, name: str) -> int:
        """The port `team` declared under `name`; a clear error naming the fix if it is missing."""
        for rule in self.ports_of(team):
            if rule.name == name:
                return rule.port
        raise ValueError(
            f"ports: no rule named {name!r} for team {team}; declare it in [[ports]], e.g. "
            f'{{ name = "{name}", team = "{team}", port = N, sources = ["admin"] }}'
        )
