"""Team Delta: kubeadm's configuration file for a single-node control plane, in the kubeadm
config API of the Kubernetes version in use. Pure functions: no I/O, no host.

Two routes use it (docs/teams/delta.md):
- recipe: Kubernetes 1.20.2 built from Debian bookworm's source, API ``kubeadm.k8s.io/v1beta2``,
  images from a local repository, Debian's etcd-server as external etcd over TLS;
- release: a pinned upstream release (>= 1.31), API ``kubeadm.k8s.io/v1beta4``, stacked etcd.

The file has four documents: InitConfiguration, ClusterConfiguration, KubeletConfiguration
(``kubelet.config.k8s.io/v1beta1``) and KubeProxyConfiguration
(``kubeproxy.config.k8s.io/v1alpha1``).

What differs between the kubeadm API versions this module renders, from the Go types
(kubernetes/kubernetes ``cmd/kubeadm/app/apis/kubeadm/<version>/types.go``; v1beta2 as of
v1.20.2, v1beta4 as of a release >= 1.31; sources in docs/teams/delta.md):

    field                              v1beta2 (1.15-1.21)           v1beta4 (>= 1.31)
    *.extraArgs, kubeletExtraArgs      map flag -> value             list of {name, value}
    control plane wait                 apiServer.timeoutFor-         InitConfiguration.timeouts.
                                       ControlPlane                  controlPlaneComponentHealthCheck
    skipping init phases               --skip-phases flag only       also InitConfiguration.skipPhases
    dns                                dns.type (CoreDNS)            no type; dns.disabled
    ClusterConfiguration               useHyperKubeImage             (removed); proxy.disabled,
                                                                     encryptionAlgorithm, ...
    nodeRegistration.taints            nil: control-plane taint; [] : no taint (both versions)

v1beta3 (Kubernetes 1.22-1.30) is not rendered: neither route uses it (the recipe is 1.20, and
those releases are past upstream support). kube-proxy's config stays v1alpha1 and the kubelet's
v1beta1 in both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import yaml

KUBEADM_GROUP = "kubeadm.k8s.io"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"
KUBE_PROXY_API = "kubeproxy.config.k8s.io/v1alpha1"

# Bravo's containerd (BaseSettings.containerd_socket), as a CRI endpoint URL.
CRI_SOCKET = "unix:///run/containerd/containerd.sock"

# External etcd: Debian's etcd-server on the host, TLS with certificates at kubeadm's usual
# paths (the CA kubeadm would use for stacked etcd, and the API server's etcd client pair).
ETCD_ENDPOINT = "https://127.0.0.1:2379"
ETCD_CA_FILE = "/etc/kubernetes/pki/etcd/ca.crt"
ETCD_CERT_FILE = "/etc/kubernetes/pki/apiserver-etcd-client.crt"
ETCD_KEY_FILE = "/etc/kubernetes/pki/apiserver-etcd-client.key"
# Stacked etcd: kubeadm's static pod keeps its data here (kubeadm's default, made explicit).
ETCD_DATA_DIR = "/var/lib/etcd"

# Phase names of "kubeadm init" (cmd/kubeadm/app/cmd/phases/init/{preflight,addons}.go).
PHASE_PREFLIGHT = "preflight"
PHASE_COREDNS = "addon/coredns"

# kubeadm's preflight requires crictl in PATH up to 1.30 (a mandatory InPathCheck for any
# non-docker runtime); 1.31 talks to the CRI itself and only warns, 1.32 stops checking
# (kubernetes/kubeadm#3064, kubernetes/kubernetes#124685).
_LAST_MINOR_NEEDING_CRICTL = 30

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


@dataclass(frozen=True)
class ClusterSpec:
    """What the control plane is: one node, its address, subnets, images, etcd mode, and what
    the host lacks. Built by Delta's step from settings and the run's profile."""

    # A full release version without "v" ("1.20.2", "1.35.1"): kubeadm would look a partial
    # version or a label up on the internet.
    version: str
    node_name: str
    advertise_address: str
    bind_port: int
    cluster_name: str
    pod_subnet: str
    service_subnet: str
    image_repository: str
    etcd: Literal["external", "stacked"]
    cert_sans: tuple[str, ...]
    # A container-based server sharing its kernel with the controller: kube-proxy must not
    # write global sysctls (nf_conntrack_max, conntrack timeouts).
    namespaced_sysctls_only: bool
    has_crictl: bool
    has_coredns_image: bool
    # A stable address for the control plane (a virtual IP, later); kubeadm adds it to the API
    # server's certificate, and joining nodes reach the cluster through it.
    control_plane_endpoint: str | None = None
    # How long "kubeadm init" waits for the control plane, in seconds (DeltaSettings.ready_timeout):
    # v1beta2 (1.20) bounds the API server's health, v1beta4 each control-plane component's
    # (API server, controller manager, scheduler). None: kubeadm's default (4 minutes).
    control_plane_timeout: float | None = None
    # False: kubelet runs with swap on (delta.swap = "allow"); True: kubelet's default, it
    # refuses to start while swap is on (Delta turns swap off first).
    fail_swap_on: bool = True


class SkippedPhase(NamedTuple):
    phase: str
    reason: str


@dataclass(frozen=True)
class _Api:
    """One kubeadm config API version and the shape of the fields this module renders."""

    name: str
    first_minor: int
    last_minor: int | None
    # extraArgs / kubeletExtraArgs: a list of {name, value} (True) or a map (False).
    args_as_list: bool
    # The control plane wait: InitConfiguration.timeouts (True) or apiServer.timeoutForControlPlane.
    timeouts_struct: bool
    # InitConfiguration.skipPhases exists (v1beta3 on); before, only the --skip-phases flag.
    skip_phases_field: bool
    rendered: bool = True

    @property
    def group_version(self) -> str:
        return f"{KUBEADM_GROUP}/{self.name}"

    def span(self) -> str:
        return f"1.{self.first_minor}-1.{self.last_minor}" if self.last_minor else f">= 1.{self.first_minor}"


_APIS = (
    _Api("v1beta2", 15, 21, args_as_list=False, timeouts_struct=False, skip_phases_field=False),
    _Api(
        "v1beta3", 22, 30, args_as_list=False, timeouts_struct=False, skip_phases_field=True, rendered=False
    ),
    _Api("v1beta4", 31, None, args_as_list=True, timeouts_struct=True, skip_phases_field=True),
)


def _supported() -> str:
    return "; ".join(f"{api.span()} ({api.group_version})" for api in _APIS if api.rendered)


def _minor(version: str) -> int:
    match = _VERSION.match(version)
    if not match:
        raise ValueError(
            f"Kubernetes version {version!r} is not MAJOR.MINOR.PATCH (e.g. 1.20.2); "
            f"supported: {_supported()}"
        )
    if int(match.group(1)) != 1:
        raise ValueError(f"Kubernetes {version} is not a 1.x release; supported: {_supported()}")
    return int(match.group(2))


def _api(version: str) -> _Api:
    minor = _minor(version)
    for api in _APIS:
        if minor >= api.first_minor and (api.last_minor is None or minor <= api.last_minor):
            if not api.rendered:
                raise ValueError(
                    f"Kubernetes {version} would need {api.group_version}, which this suite does not "
                    f"render (neither the recipe nor a supported release is a {api.span()}); "
                    f"supported: {_supported()}"
                )
            return api
    raise ValueError(
        f"Kubernetes {version} is older than any kubeadm config API rendered here; supported: {_supported()}"
    )


def kubeadm_api_version(version: str) -> str:
    """The kubeadm config ``apiVersion`` for Kubernetes ``version``, e.g.
    ``kubeadm.k8s.io/v1beta2`` for 1.20.2. ValueError naming the supported ranges otherwise."""
    return _api(version).group_version


def skip_phases(spec: ClusterSpec) -> tuple[SkippedPhase, ...]:
    """The "kubeadm init" phases this host cannot run, each with why."""
    minor = _minor(spec.version)
    skipped: list[SkippedPhase] = []
    if not spec.has_crictl and minor <= _LAST_MINOR_NEEDING_CRICTL:
        skipped.append(
            SkippedPhase(
                PHASE_PREFLIGHT,
                f"no crictl on the host, and kubeadm {spec.version}'s preflight requires it in PATH "
                "(a mandatory check for a non-docker runtime)",
            )
        )
    if not spec.has_coredns_image:
        skipped.append(
            SkippedPhase(
                PHASE_COREDNS,
                f"no CoreDNS image in {spec.image_repository}: the addon's Deployment would never start",
            )
        )
    return tuple(skipped)


def render(spec: ClusterSpec) -> str:
    """kubeadm's config file for ``kubeadm init --config``: InitConfiguration,
    ClusterConfiguration, KubeletConfiguration and KubeProxyConfiguration, as YAML."""
    api = _api(spec.version)
    return _dump([_init(spec, api), _cluster(spec, api), _kubelet(spec, api), _kube_proxy(spec)])


@dataclass(frozen=True)
class JoinSpec:
    """A node joining a cluster through its control-plane endpoint: ``kubeadm join``'s
    JoinConfiguration. ``control_plane`` makes it a further control plane (the cluster's
    certificate authorities must be on the node already)."""

    version: str
    node_name: str
    advertise_address: str
    endpoint: str
    token: str
    ca_cert_hash: str
    control_plane: bool
    bind_port: int
    has_crictl: bool


def join_skip_phases(spec: JoinSpec) -> tuple[str, ...]:
    """The "kubeadm join" phases this node cannot run (its preflight, as for init)."""
    needs_crictl = _minor(spec.version) <= _LAST_MINOR_NEEDING_CRICTL
    return (PHASE_PREFLIGHT,) if needs_crictl and not spec.has_crictl else ()


def render_join(spec: JoinSpec) -> str:
    """kubeadm's config file for ``kubeadm join --config``. It holds a bootstrap token: the
    file is written with mode 0600 and the token registered as a secret."""
    api = _api(spec.version)
    node: dict[str, Any] = {
        "name": spec.node_name,
        "criSocket": CRI_SOCKET,
        "kubeletExtraArgs": _args(api, {"node-ip": spec.advertise_address}),
    }
    doc: dict[str, Any] = {
        "apiVersion": api.group_version,
        "kind": "JoinConfiguration",
        "nodeRegistration": node,
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": spec.endpoint,
                "token": spec.token,
                "caCertHashes": [spec.ca_cert_hash],
            }
        },
    }
    skipped = join_skip_phases(spec)
    if skipped and api.skip_phases_field:
        doc["skipPhases"] = list(skipped)
    if spec.control_plane:
        doc["controlPlane"] = {
            "localAPIEndpoint": {"advertiseAddress": spec.advertise_address, "bindPort": spec.bind_port}
        }
    return _dump([doc])


def _args(api: _Api, args: Mapping[str, str]) -> dict[str, str] | list[dict[str, str]]:
    if api.args_as_list:
        return [{"name": name, "value": value} for name, value in args.items()]
    return dict(args)


def _duration(seconds: float) -> str:
    # metav1.Duration is read by Go's time.ParseDuration.
    return f"{math.ceil(seconds)}s"


def _init(spec: ClusterSpec, api: _Api) -> dict[str, Any]:
    node: dict[str, Any] = {
        "name": spec.node_name,
        "criSocket": CRI_SOCKET,
        # An empty list, not an absent field: absent means kubeadm's control-plane NoSchedule
        # taint; pods must schedule on this single node.
        "taints": [],
        # The kubelet reports this address, not whichever one it picks (a bridge, a virtual IP).
        "kubeletExtraArgs": _args(api, {"node-ip": spec.advertise_address}),
    }
    doc: dict[str, Any] = {
        "apiVersion": api.group_version,
        "kind": "InitConfiguration",
        "nodeRegistration": node,
        "localAPIEndpoint": {"advertiseAddress": spec.advertise_address, "bindPort": spec.bind_port},
    }
    skipped = skip_phases(spec)
    if skipped and api.skip_phases_field:
        doc["skipPhases"] = [phase.phase for phase in skipped]
    if spec.control_plane_timeout is not None and api.timeouts_struct:
        doc["timeouts"] = {"controlPlaneComponentHealthCheck": _duration(spec.control_plane_timeout)}
    return doc


def _etcd(spec: ClusterSpec) -> dict[str, Any]:
    if spec.etcd == "external":
        return {
            "external": {
                "endpoints": [ETCD_ENDPOINT],
                "caFile": ETCD_CA_FILE,
                "certFile": ETCD_CERT_FILE,
                "keyFile": ETCD_KEY_FILE,
            }
        }
    return {"local": {"dataDir": ETCD_DATA_DIR}}


def _cluster(spec: ClusterSpec, api: _Api) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": api.group_version,
        "kind": "ClusterConfiguration",
        "clusterName": spec.cluster_name,
        "kubernetesVersion": f"v{spec.version}",
        "imageRepository": spec.image_repository,
    }
    if spec.control_plane_endpoint:
        doc["controlPlaneEndpoint"] = spec.control_plane_endpoint
    doc["networking"] = {"podSubnet": spec.pod_subnet, "serviceSubnet": spec.service_subnet}
    doc["etcd"] = _etcd(spec)
    api_server: dict[str, Any] = {}
    if spec.cert_sans:
        api_server["certSANs"] = list(spec.cert_sans)
    if spec.control_plane_timeout is not None and not api.timeouts_struct:
        api_server["timeoutForControlPlane"] = _duration(spec.control_plane_timeout)
    if api_server:
        doc["apiServer"] = api_server
    return doc


def _kubelet(spec: ClusterSpec, api: _Api) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": KUBELET_API,
        "kind": "KubeletConfiguration",
        # Matches runc's cgroup driver in Bravo's containerd (BravoSettings.systemd_cgroup).
        "cgroupDriver": "systemd",
        # The kubelet may set its kernel tunables (vm.overcommit_memory, kernel.panic, ...)
        # where they differ; a container-based server has them set by the host beforehand.
        "protectKernelDefaults": False,
        # The control plane runs as static pods: a changed manifest (an upgrade, a restored
        # component) takes effect within 5 s rather than the default 20 s; the scan is a
        # directory listing.
        "fileCheckFrequency": "5s",
    }
    doc.update(_swap(spec, api))
    return doc


def _swap(spec: ClusterSpec, api: _Api) -> dict[str, Any]:
    """kubelet's swap settings where swap stays on (delta.swap = "allow"): failSwapOn (1.20
    and current alike); from 1.22 memorySwap too, whose NoSwap keeps every pod off swap (the
    v1beta4 releases; 1.20 has no such field and gives pods no swap control)."""
    if spec.fail_swap_on:
        return {}
    if api.timeouts_struct:
        return {"failSwapOn": False, "memorySwap": {"swapBehavior": "NoSwap"}}
    return {"failSwapOn": False}


def _kube_proxy(spec: ClusterSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": KUBE_PROXY_API,
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        # Its health endpoint (0.0.0.0 by default) serves the node itself only; metrics are
        # on loopback by default. Nothing of kube-proxy listens where the firewall decides.
        "healthzBindAddress": "127.0.0.1:10256",
        # NodePorts answer on loopback only; Services are published through the load balancer
        # (Team Echo-1), which forwards to their ClusterIPs. 1.20 also holds each NodePort
        # open as a listening socket on these addresses; since kubernetes/kubernetes#108496
        # (merged for 1.24) kube-proxy opens no such socket and the CIDRs only restrict
        # where its rules accept NodePort traffic. Either way from outside only
        # declared ports pass the firewall.
        "nodePortAddresses": ["127.0.0.0/8"],
    }
    if spec.namespaced_sysctls_only:
        # 0 leaves each limit as the kernel has it (types.go: "0 to leave the limit as-is and
        # ignore min"; a timeout "must be greater than 0 to set"): nf_conntrack_max and the
        # conntrack timeouts are global to a kernel the controller shares.
        doc["conntrack"] = {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"}
    return doc


class _Dumper(yaml.SafeDumper):
    """kubeadm reads its config with sigs.k8s.io/yaml (go-yaml v2, YAML 1.1 rules): a plain
    `yes`, `on` or `y` is a boolean there. PyYAML quotes what its own YAML 1.1 resolver would
    misread (`yes`, `on`, numbers, ...); go-yaml also takes `y`/`n` for booleans, PyYAML does
    not, so those are quoted here."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = '"' if data in ("y", "Y", "n", "N") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(documents: list[dict[str, Any]]) -> str:
    # Block style; apiVersion and kind first, in the order written above.
    return yaml.dump_all(documents, Dumper=_Dumper, default_flow_style=False, sort_keys=False)
