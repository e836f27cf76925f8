"""The settings of Team Echo-1 (the config's [echo1] section): the pod network, network policies and
the load balancer."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from settings.base import CIDR, EffectiveProfile, Strict, TeamSettings, Waiver, parse_cidr
from steps.delta.settings import Listener, configured_profile, pinned, undeclared_listeners, unversioned_pins

# Where Calico's install-cni init container writes its plugins (calico.yaml's hostPath volume
# "cni-bin-dir", v3.30 and v3.31 alike): the container runtime must look there.
CALICO_CNI_BIN_DIR = "/opt/cni/bin"
# Where Debian's and Ubuntu's containernetworking-plugins put the plugins the bridge chain uses.
DISTRIBUTION_CNI_BIN_DIR = "/usr/lib/cni"
# calico-node runs on the host's network: BIRD speaks BGP on every address (felix's health
# port stays on localhost).
CALICO_LISTENERS = (Listener("calico-bgp", 179, "tcp", "Calico's BIRD (BGP)"),)


def metallb_listeners(version: str) -> tuple[Listener, ...]:
    """What MetalLB's speaker (host network) opens beyond loopback, by release: memberlist on
    7946 tcp and udp, and its metrics port, 7472 up to v0.15 and 9120 from v0.16
    (config/manifests/metallb-native.yaml at each tag; its health port 17472 is on 127.0.0.1)."""
    major, minor = (int(part) for part in version.removeprefix("v").split(".")[:2])
    metrics = 9120 if (major, minor) >= (0, 16) else 7472
    return (
        Listener("metallb-memberlist", 7946, "tcp", "MetalLB's speaker (memberlist)"),
        Listener("metallb-memberlist-udp", 7946, "udp", "MetalLB's speaker (memberlist)"),
        Listener("metallb-metrics", metrics, "tcp", f"MetalLB {version}'s speaker (metrics)"),
    )


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
        return [v if v in ("namespace", "cluster", "world") else parse_cidr(v) for v in values]


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
    # Key into [artifacts] of Calico's manifest: manifests/calico.yaml fetched at the release
    # tag (settings/hetzner.example.toml). Its install-cni writes to /opt/cni/bin, which
    # bravo.cni_bin_dir must then name (checked when the config loads).
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


class Echo1Settings(TeamSettings):
    """Team Echo-1: the pod network, network policies and the load balancer."""

    section: ClassVar[str] = "echo1"

    pod_network: PodNetworkSettings = PodNetworkSettings()
    network_policies: NetworkPolicySettings = NetworkPolicySettings()
    load_balancer: LoadBalancerSettings = LoadBalancerSettings()
    # The bandwidth cap the pod network's check puts on a pod (kubernetes.io/ingress-bandwidth).
    check_bandwidth: str = Field("8M", pattern=r"^[1-9][0-9]*[KMG]$")

    def problems_with(self, config: Any) -> list[str]:
        return self._pool_problems(config) + self._pinned_component_problems(config)

    def _pinned_component_problems(self, config: Any) -> list[str]:
        """The bridge chain where this config runs it; Calico and MetalLB where it runs them
        (resolved for its profile, and pinned: without a pin a run stops at the fetch, naming
        it)."""
        profile = configured_profile(config)
        problems: list[str] = []
        plugin = self.pod_network.resolved_plugin(profile)
        if plugin == "bridge" and config.bravo.cni_bin_dir != DISTRIBUTION_CNI_BIN_DIR:
            problems.append(
                f"bravo.cni_bin_dir is {config.bravo.cni_bin_dir}, but the bridge chain's plugins are "
                f"the OS package's, in {DISTRIBUTION_CNI_BIN_DIR}: no pod would start. "
                f'Fix: set bravo.cni_bin_dir = "{DISTRIBUTION_CNI_BIN_DIR}"'
            )
        calico = self.pod_network.calico_manifest
        if plugin == "calico" and pinned(config, [calico]):
            problems += unversioned_pins(config, [calico])
            if config.bravo.cni_bin_dir != CALICO_CNI_BIN_DIR:
                problems.append(
                    f"bravo.cni_bin_dir is {config.bravo.cni_bin_dir}, but Calico's install-cni writes "
                    f"its plugins to {CALICO_CNI_BIN_DIR}: containerd would find no calico plugin and "
                    "no pod off the host network would start. "
                    f'Fix: set bravo.cni_bin_dir = "{CALICO_CNI_BIN_DIR}"'
                )
            problems += undeclared_listeners(config, "Echo-1", CALICO_LISTENERS)
        metallb = self.load_balancer.metallb_manifest
        if self.load_balancer.resolved_implementation(profile) == "metallb" and pinned(config, [metallb]):
            problems += unversioned_pins(config, [metallb])
            problems += undeclared_listeners(
                config, "Echo-1", metallb_listeners(config.artifacts[metallb].version)
            )
        return problems

    def _pool_problems(self, config: Any) -> list[str]:
        # Scratch servers take addresses from scratch.subnet; the pool must be kept from them.
        subnet = ipaddress.ip_network(config.scratch.subnet)
        kept = [ipaddress.ip_network(net) for net in config.scratch.keep_free]
        return [
            f"echo1.load_balancer.pool {net} lies in scratch.subnet {subnet}, where scratch servers "
            f'get addresses: add it to scratch.keep_free (keep_free = ["{net}"])'
            for net in map(ipaddress.ip_network, self.load_balancer.pool)
            if net.version == subnet.version
            and net.subnet_of(subnet)  # type: ignore[arg-type]
            and not any(net.subnet_of(k) for k in kept)  # type: ignore[arg-type]
        ]
