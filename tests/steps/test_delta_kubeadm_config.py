"""Team Delta's kubeadm config as data: what render() writes for each route, the recipe's file
checked by a real kubeadm 1.20.2, and the release's v1beta4 file checked field by field against
a transcription of the upstream Go types (no kubeadm of that version runs here)."""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from settings.loader import load_settings
from steps.delta.kubeadm_config import (
    CRI_SOCKET,
    ClusterSpec,
    SkippedPhase,
    kubeadm_api_version,
    render,
    skip_phases,
)
from tests.support.example import filled_text

REPO = Path(__file__).resolve().parents[2]

# The recipe on a scratch server: no crictl, no CoreDNS image, a kernel shared with the controller.
RECIPE = ClusterSpec(
    version="1.20.2",
    node_name="hvs-host1",
    advertise_address="10.88.0.10",
    bind_port=6443,
    cluster_name="hvsuite",
    pod_subnet="10.244.0.0/16",
    service_subnet="10.96.0.0/12",
    image_repository="localhost/hvsuite-k8s",
    etcd="external",
    cert_sans=("hvs-host1", "10.88.0.10"),
    namespaced_sysctls_only=True,
    has_crictl=False,
    has_coredns_image=False,
    control_plane_timeout=300,
)
# The release on a real server.
RELEASE = ClusterSpec(
    version="1.35.1",
    node_name="hetzner1",
    advertise_address="203.0.113.10",
    bind_port=6443,
    cluster_name="hvsuite",
    pod_subnet="10.244.0.0/16",
    service_subnet="10.96.0.0/12",
    image_repository="registry.k8s.io",
    etcd="stacked",
    cert_sans=("hetzner1.example.net",),
    namespaced_sysctls_only=False,
    has_crictl=True,
    has_coredns_image=True,
    control_plane_timeout=300,
)


def documents(text: str) -> dict[str, dict[str, Any]]:
    """The rendered documents by kind (each kind appears once)."""
    loaded = list(yaml.safe_load_all(text))
    by_kind = {doc["kind"]: doc for doc in loaded}
    assert len(by_kind) == len(loaded) == 4, [doc.get("kind") for doc in loaded]
    return by_kind


def dump(docs: Mapping[str, Mapping[str, Any]]) -> str:
    """Changed documents written back as render() writes them: block style, a lone `---`
    between documents (kubeadm 1.20 splits the file on such lines only)."""
    return yaml.safe_dump_all(list(docs.values()), default_flow_style=False, sort_keys=False)


# --- render ------------------------------------------------------------------------------


def test_api_version_follows_the_kubernetes_version() -> None:
    assert kubeadm_api_version("1.15.0") == "kubeadm.k8s.io/v1beta2"
    assert kubeadm_api_version("1.20.2") == "kubeadm.k8s.io/v1beta2"
    assert kubeadm_api_version("1.21.14") == "kubeadm.k8s.io/v1beta2"
    assert kubeadm_api_version("1.31.0") == "kubeadm.k8s.io/v1beta4"
    assert kubeadm_api_version("1.35.1") == "kubeadm.k8s.io/v1beta4"


@pytest.mark.parametrize(
    ("version", "why"),
    [
        ("1.25.3", r"1\.25\.3 would need kubeadm\.k8s\.io/v1beta3, which this suite does not render"),
        ("1.14.10", r"1\.14\.10 is older than any kubeadm config API rendered here"),
        ("2.0.0", r"2\.0\.0 is not a 1\.x release"),
        ("1.35", r"'1\.35' is not MAJOR\.MINOR\.PATCH"),
        ("v1.35.1", r"'v1\.35\.1' is not MAJOR\.MINOR\.PATCH"),
    ],
)
def test_an_unsupported_version_is_refused_naming_the_supported_ranges(version: str, why: str) -> None:
    supported = r"supported: 1\.15-1\.21 \(kubeadm\.k8s\.io/v1beta2\); >= 1\.31 \(kubeadm\.k8s\.io/v1beta4\)"
    for call in (kubeadm_api_version, lambda v: render(replace(RELEASE, version=v))):
        with pytest.raises(ValueError, match=f"{why}.*{supported}"):
            call(version)


@pytest.mark.parametrize("spec", [RECIPE, RELEASE], ids=["v1beta2", "v1beta4"])
def test_every_document_has_its_api_version(spec: ClusterSpec) -> None:
    docs = documents(render(spec))
    kubeadm = kubeadm_api_version(spec.version)
    assert {kind: doc["apiVersion"] for kind, doc in docs.items()} == {
        "InitConfiguration": kubeadm,
        "ClusterConfiguration": kubeadm,
        "KubeletConfiguration": "kubelet.config.k8s.io/v1beta1",
        "KubeProxyConfiguration": "kubeproxy.config.k8s.io/v1alpha1",
    }
    assert docs["ClusterConfiguration"]["kubernetesVersion"] == f"v{spec.version}"
    assert docs["ClusterConfiguration"]["imageRepository"] == spec.image_repository
    assert docs["InitConfiguration"]["nodeRegistration"]["criSocket"] == CRI_SOCKET
    assert docs["InitConfiguration"]["localAPIEndpoint"] == {
        "advertiseAddress": spec.advertise_address,
        "bindPort": 6443,
    }


@pytest.mark.parametrize("spec", [RECIPE, RELEASE], ids=["v1beta2", "v1beta4"])
def test_documents_are_split_by_lone_separator_lines(spec: ClusterSpec) -> None:
    # kubeadm 1.20 splits on a line that is exactly `---`: a document starting on the
    # separator's line (`--- {apiVersion: ...}`) would be read as part of the one before.
    lines = render(spec).splitlines()
    assert [line for line in lines if line.startswith("---")] == ["---"] * 3
    assert not [line for line in lines if line.lstrip().startswith("{")]


@pytest.mark.parametrize("spec", [RECIPE, RELEASE], ids=["v1beta2", "v1beta4"])
def test_the_node_is_untainted_and_the_kubelet_uses_systemd(spec: ClusterSpec) -> None:
    docs = documents(render(spec))
    # Present and empty: an absent list would get kubeadm's control-plane NoSchedule taint.
    assert docs["InitConfiguration"]["nodeRegistration"]["taints"] == []
    assert "taints: []" in render(spec)
    assert docs["KubeletConfiguration"]["cgroupDriver"] == "systemd"
    assert docs["KubeletConfiguration"]["protectKernelDefaults"] is False


@pytest.mark.parametrize("spec", [RECIPE, RELEASE], ids=["v1beta2", "v1beta4"])
def test_kube_proxy_leaves_conntrack_alone_only_where_sysctls_are_shared(spec: ClusterSpec) -> None:
    shared = documents(render(replace(spec, namespaced_sysctls_only=True)))["KubeProxyConfiguration"]
    assert shared == {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "healthzBindAddress": "127.0.0.1:10256",
        "nodePortAddresses": ["127.0.0.0/8"],
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    own_kernel = documents(render(replace(spec, namespaced_sysctls_only=False)))["KubeProxyConfiguration"]
    assert own_kernel["mode"] == "iptables"
    assert "conntrack" not in own_kernel


def test_extra_args_are_a_map_in_v1beta2_and_a_name_value_list_in_v1beta4() -> None:
    recipe = documents(render(RECIPE))["InitConfiguration"]["nodeRegistration"]
    release = documents(render(RELEASE))["InitConfiguration"]["nodeRegistration"]
    assert recipe["kubeletExtraArgs"] == {"node-ip": "10.88.0.10"}
    assert release["kubeletExtraArgs"] == [{"name": "node-ip", "value": "203.0.113.10"}]


def test_the_control_plane_wait_moved_from_apiserver_to_timeouts_in_v1beta4() -> None:
    recipe = documents(render(RECIPE))
    assert recipe["ClusterConfiguration"]["apiServer"]["timeoutForControlPlane"] == "300s"
    assert "timeouts" not in recipe["InitConfiguration"]
    release = documents(render(RELEASE))
    assert release["InitConfiguration"]["timeouts"] == {"controlPlaneComponentHealthCheck": "300s"}
    assert "timeoutForControlPlane" not in release["ClusterConfiguration"]["apiServer"]
    default = documents(render(replace(RELEASE, control_plane_timeout=None, cert_sans=())))
    assert "timeouts" not in default["InitConfiguration"]
    assert "apiServer" not in default["ClusterConfiguration"]


def test_etcd_is_external_over_tls_or_kubeadms_static_pod() -> None:
    assert documents(render(RECIPE))["ClusterConfiguration"]["etcd"] == {
        "external": {
            "endpoints": ["https://127.0.0.1:2379"],
            "caFile": "/etc/kubernetes/pki/etcd/ca.crt",
            "certFile": "/etc/kubernetes/pki/apiserver-etcd-client.crt",
            "keyFile": "/etc/kubernetes/pki/apiserver-etcd-client.key",
        }
    }
    assert documents(render(RELEASE))["ClusterConfiguration"]["etcd"] == {
        "local": {"dataDir": "/var/lib/etcd"}
    }


@pytest.mark.parametrize("spec", [RECIPE, RELEASE], ids=["v1beta2", "v1beta4"])
def test_control_plane_endpoint_is_rendered_only_when_given(spec: ClusterSpec) -> None:
    assert "controlPlaneEndpoint" not in documents(render(spec))["ClusterConfiguration"]
    vip = replace(spec, control_plane_endpoint="203.0.113.100:6443")
    cluster = documents(render(vip))["ClusterConfiguration"]
    assert cluster["controlPlaneEndpoint"] == "203.0.113.100:6443"
    assert cluster["apiServer"]["certSANs"] == list(spec.cert_sans)


def test_the_recipe_skips_preflight_and_coredns_with_reasons() -> None:
    preflight, coredns = skip_phases(RECIPE)
    assert preflight.phase == "preflight"
    assert "crictl" in preflight.reason and "1.20.2" in preflight.reason
    assert coredns == SkippedPhase(
        "addon/coredns", "no CoreDNS image in localhost/hvsuite-k8s: the addon's Deployment would never start"
    )
    # v1beta2 has no skipPhases field: the step passes --skip-phases.
    assert "skipPhases" not in documents(render(RECIPE))["InitConfiguration"]


def test_a_release_with_crictl_and_coredns_skips_nothing() -> None:
    assert skip_phases(RELEASE) == ()
    assert "skipPhases" not in documents(render(RELEASE))["InitConfiguration"]


def test_kubeadm_from_1_31_on_runs_preflight_without_crictl() -> None:
    # kubeadm >= 1.31 talks to the CRI itself (kubernetes/kubeadm#3064).
    assert skip_phases(replace(RELEASE, has_crictl=False)) == ()
    no_dns = replace(RELEASE, has_crictl=False, has_coredns_image=False)
    assert [phase.phase for phase in skip_phases(no_dns)] == ["addon/coredns"]
    assert documents(render(no_dns))["InitConfiguration"]["skipPhases"] == ["addon/coredns"]


def test_strings_yaml_1_1_would_misread_are_quoted() -> None:
    # kubeadm's YAML reader (go-yaml, YAML 1.1) takes a plain yes/on/y for a boolean.
    text = render(replace(RELEASE, node_name="yes", cert_sans=("on", "y", "hetzner1")))
    assert re.search(r"name: (\"yes\"|'yes')\n", text), text
    assert re.search(r"- (\"on\"|'on')\n", text) and re.search(r"- (\"y\"|'y')\n", text), text
    assert "- hetzner1\n" in text
    assert documents(text)["InitConfiguration"]["nodeRegistration"]["name"] == "yes"


# --- kubeadm 1.20.2 on the recipe's file ----------------------------------------------------
#
# `kubeadm config images list --config F` (1.20: cmd/kubeadm/app/cmd/config.go, NewImagesList)
# loads F with configutil.LoadOrDefaultInitConfiguration -> BytesToInitConfiguration ->
# documentMapToInitConfiguration (app/util/config/initconfiguration.go): decode (a wrong type
# fails), dynamic defaults, then validation.ValidateInitConfiguration; it prints image names
# and touches nothing on the machine. `kubeadm config migrate --old-config F` goes through the
# same function and prints the config as kubeadm holds it. Unknown fields are only a klog
# warning in 1.20 (strict.VerifyUnmarshalStrict), so a warning fails these checks too.

_KLOG_WARNING = re.compile(r"^W\d{4} ", re.MULTILINE)


@pytest.fixture(scope="module")
def kubeadm_1_20() -> Path:
    """The Kubernetes recipe's kubeadm v1.20.2 (built from Debian bookworm's source on the
    first use on a machine, about 13 minutes on 2 cores; cached outside the clone after)."""
    from recipes import RecipeCache
    from recipes import kubernetes as kubernetes_recipe
    from settings.loader import load_settings

    return RecipeCache().ensure(kubernetes_recipe.recipe(load_settings())).file("bin/kubeadm")


@dataclass(frozen=True)
class KubeadmRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if _KLOG_WARNING.match(line)]

    def assert_accepted(self) -> None:
        assert self.returncode == 0, f"kubeadm refused the config:\n{self.stderr}{self.stdout}"
        assert not self.warnings, "kubeadm warned about the config:\n" + "\n".join(self.warnings)
        assert "WARNING" not in self.stdout, self.stdout


def run_kubeadm(kubeadm: Path, tmp_path: Path, config: str, *command: str) -> KubeadmRun:
    path = tmp_path / "kubeadm.yaml"
    path.write_text(config)
    args = [str(kubeadm), *command]
    args += ["--old-config", str(path)] if command[-1] == "migrate" else ["--config", str(path)]
    # No HOME, no proxy, no kubeconfig: nothing of this machine's user reaches kubeadm.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        args, capture_output=True, text=True, errors="replace", timeout=120, env=env, check=False
    )
    return KubeadmRun(done.returncode, done.stdout, done.stderr)


def images_list(kubeadm: Path, tmp_path: Path, config: str) -> KubeadmRun:
    return run_kubeadm(kubeadm, tmp_path, config, "config", "images", "list")


def test_the_binary_is_kubeadm_1_20_2(kubeadm_1_20: Path) -> None:
    done = subprocess.run(
        [str(kubeadm_1_20), "version", "-o", "short"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "v1.20.2", done


@pytest.mark.parametrize(
    "spec",
    [RECIPE, replace(RECIPE, namespaced_sysctls_only=False, control_plane_endpoint="10.88.0.100:6443")],
    ids=["scratch", "vip"],
)
def test_kubeadm_1_20_accepts_the_recipe(kubeadm_1_20: Path, tmp_path: Path, spec: ClusterSpec) -> None:
    run = images_list(kubeadm_1_20, tmp_path, render(spec))
    run.assert_accepted()
    images = run.stdout.split()
    assert "localhost/hvsuite-k8s/kube-apiserver:v1.20.2" in images
    assert "localhost/hvsuite-k8s/kube-proxy:v1.20.2" in images
    # External etcd: kubeadm needs no etcd image.
    assert not [image for image in images if "/etcd:" in image], images


def test_kubeadm_1_20_reads_the_node_untainted(kubeadm_1_20: Path, tmp_path: Path) -> None:
    run = run_kubeadm(kubeadm_1_20, tmp_path, render(RECIPE), "config", "migrate")
    run.assert_accepted()
    held = {doc["kind"]: doc for doc in yaml.safe_load_all(run.stdout) if doc}
    node = held["InitConfiguration"]["nodeRegistration"]
    assert node["taints"] == []
    assert node["kubeletExtraArgs"] == {"node-ip": "10.88.0.10"}
    assert node["criSocket"] == CRI_SOCKET
    cluster = held["ClusterConfiguration"]
    assert cluster["apiServer"]["timeoutForControlPlane"] == "5m0s"
    assert cluster["etcd"]["external"]["endpoints"] == ["https://127.0.0.1:2379"]
    # The same file without the empty list: kubeadm 1.20 adds its control-plane taint.
    docs = documents(render(RECIPE))
    del docs["InitConfiguration"]["nodeRegistration"]["taints"]
    tainted = run_kubeadm(kubeadm_1_20, tmp_path, dump(docs), "config", "migrate")
    tainted.assert_accepted()
    held = {doc["kind"]: doc for doc in yaml.safe_load_all(tainted.stdout) if doc}
    assert held["InitConfiguration"]["nodeRegistration"]["taints"] == [
        {"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}
    ]


def _set(path: str, value: Any) -> Callable[[dict[str, dict[str, Any]]], None]:
    kind, *keys = path.split(".")

    def change(docs: dict[str, dict[str, Any]]) -> None:
        node = docs[kind]
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (_set("ClusterConfiguration.networking.podSubnet", "10.244.0.0/33"), "podSubnet"),
        (_set("ClusterConfiguration.networking.serviceSubnet", "10.96.0.0"), "serviceSubnet"),
        (_set("InitConfiguration.nodeRegistration.criSocket", "tcp://127.0.0.1:2376"), "criSocket"),
        (_set("InitConfiguration.localAPIEndpoint.advertiseAddress", "10.88.0.300"), "10.88.0.300"),
        (_set("ClusterConfiguration.etcd.external.endpoints", ["http://127.0.0.1:2379"]), "endpoints"),
        # v1beta4's list shape in a v1beta2 file does not even decode.
        (
            _set(
                "InitConfiguration.nodeRegistration.kubeletExtraArgs",
                [{"name": "node-ip", "value": "1.2.3.4"}],
            ),
            "kubeletExtraArgs",
        ),
        (_set("ClusterConfiguration.apiServer.certSANs", ["not a name!"]), "certSANs"),
        (_set("ClusterConfiguration.controlPlaneEndpoint", "10.88.0.100:x"), "port x"),
        (_set("KubeProxyConfiguration.conntrack.maxPerCore", "zero"), "KubeProxyConntrackConfiguration"),
    ],
    ids=[
        "pod-subnet",
        "service-subnet",
        "cri-scheme",
        "address",
        "etcd-http",
        "v1beta4-args",
        "cert-sans",
        "endpoint-port",
        "kube-proxy-type",
    ],
)
def test_kubeadm_1_20_refuses_a_broken_recipe(
    kubeadm_1_20: Path, tmp_path: Path, change: Callable[[dict[str, dict[str, Any]]], None], expect: str
) -> None:
    docs = documents(render(RECIPE))
    change(docs)
    run = images_list(kubeadm_1_20, tmp_path, dump(docs))
    assert run.returncode != 0, f"kubeadm accepted a broken config:\n{run.stdout}"
    assert expect in run.stderr + run.stdout


def test_kubeadm_1_20_leaves_component_config_values_unchecked(kubeadm_1_20: Path, tmp_path: Path) -> None:
    # 1.20's componentconfigs.Validate is empty: the kubelet's and kube-proxy's documents are
    # only decoded. Their values are pinned by the render tests above, not by this binary.
    docs = documents(render(RECIPE))
    _set("KubeProxyConfiguration.mode", "iptablez")(docs)
    _set("KubeletConfiguration.cgroupDriver", "systemD")(docs)
    images_list(kubeadm_1_20, tmp_path, dump(docs)).assert_accepted()


@pytest.mark.parametrize(
    "change",
    [
        _set("InitConfiguration.nodeRegistration.taint", []),
        _set("ClusterConfiguration.networking.podSubnets", "10.244.0.0/16"),
        _set("KubeletConfiguration.cgroupDrivers", "systemd"),
        _set("KubeProxyConfiguration.conntrack.maxPerCores", 0),
        # v1beta4's field in a v1beta2 file.
        _set("InitConfiguration.timeouts", {"controlPlaneComponentHealthCheck": "300s"}),
    ],
    ids=["init", "cluster", "kubelet", "kube-proxy", "v1beta4-timeouts"],
)
def test_an_unknown_field_is_a_warning_in_kubeadm_1_20_and_a_failure_here(
    kubeadm_1_20: Path, tmp_path: Path, change: Callable[[dict[str, dict[str, Any]]], None]
) -> None:
    docs = documents(render(RECIPE))
    change(docs)
    run = images_list(kubeadm_1_20, tmp_path, dump(docs))
    assert run.returncode == 0
    assert any("unknown field" in warning for warning in run.warnings), run.stderr
    with pytest.raises(AssertionError, match="kubeadm warned"):
        run.assert_accepted()


# --- v1beta4 against the upstream Go types --------------------------------------------------
#
# No kubeadm >= 1.31 runs here, and no machine-readable schema of these types is published
# (kubernetes-validate ships the API server's resources only: no kubeadm, kubelet or
# kube-proxy configuration). So the fields below are transcribed from kubernetes/kubernetes:
#   cmd/kubeadm/app/apis/kubeadm/v1beta4/types.go   at 1329935739c3aa007d23cb9a4dadfee9d59ff79b
#     (v1.31 fields; the v1beta4 changelog on kubernetes.io/docs/reference/config-api/
#     kubeadm-config.v1beta4 adds, up to v1.35, only ECDSA-P384, UpgradeConfiguration.plan.
#     etcdUpgrade and ExternalEtcd.httpEndpoints, included below)
#   staging/src/k8s.io/kube-proxy/config/v1alpha1/types.go at ce3490900116b936d61ee08888436fda1f7abe49
#   staging/src/k8s.io/kubelet/config/v1beta1/types.go     at 8383bd62ee26c68c4eac4b49431d3403d0880a26
#     (only the fields rendered: the type has about a hundred)
# (commits as the search index reports them). Strict: an unknown field at any level fails,
# and so does a field under a struct marked OPAQUE (accepted upstream, not transcribed here:
# transcribe it before rendering it). This is not kubeadm's validator: the step runs
# `kubeadm config validate` on the host before `kubeadm init`.

FieldCheck = Callable[[Any], str | None]


@dataclass(frozen=True)
class Scalar:
    kind: str  # string, int, bool, duration
    check: FieldCheck | None = None


@dataclass(frozen=True)
class ListOf:
    item: Any


@dataclass(frozen=True)
class MapOf:
    value: Any


OPAQUE = object()
_DURATION = re.compile(r"^(0|-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+)$")
_DNS_SUBDOMAIN = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _one_of(*allowed: str) -> FieldCheck:
    return lambda value: None if value in allowed else f"{value!r} is not one of {', '.join(allowed)}"


def _ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    return None


def _cidr(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"{value!r} is not a CIDR"
    return None if "/" in value else f"{value!r} has no prefix length"


def _ip_or_dns(value: str) -> str | None:
    return (
        None
        if _ip(value) is None or _DNS_SUBDOMAIN.match(value)
        else f"{value!r} is neither an IP nor a DNS name"
    )


def _host_port(value: str) -> str | None:
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        return f"{value!r}: bad port"
    return _ip_or_dns(host.strip("[]"))


def _unix_socket(value: str) -> str | None:
    scheme, _, path = value.partition("://")
    return None if scheme == "unix" and path.startswith("/") else f"{value!r} is not unix:///absolute/path"


def _kubernetes_version(value: str) -> str | None:
    return None if re.match(r"^v\d+\.\d+\.\d+$", value) else f"{value!r} is not vMAJOR.MINOR.PATCH"


STRING, INT, BOOL, DURATION = Scalar("string"), Scalar("int"), Scalar("bool"), Scalar("duration")
ARG = {"name": STRING, "value": STRING}  # type Arg
TAINT = {
    "key": STRING,
    "value": STRING,
    "effect": Scalar("string", _one_of("NoSchedule", "PreferNoSchedule", "NoExecute")),
    "timeAdded": STRING,
}
HOST_PATH_MOUNT = {
    "name": STRING,
    "hostPath": STRING,
    "mountPath": STRING,
    "readOnly": BOOL,
    "pathType": STRING,
}
CONTROL_PLANE_COMPONENT = {
    "extraArgs": ListOf(ARG),
    "extraVolumes": ListOf(HOST_PATH_MOUNT),
    "extraEnvs": ListOf(OPAQUE),  # corev1.EnvVar inline
}
IMAGE_META = {"imageRepository": STRING, "imageTag": STRING}
NODE_REGISTRATION = {
    "name": Scalar("string", lambda v: None if _DNS_SUBDOMAIN.match(v) else f"{v!r} is not a DNS subdomain"),
    "criSocket": Scalar("string", _unix_socket),
    "taints": ListOf(TAINT),
    "kubeletExtraArgs": ListOf(ARG),
    "ignorePreflightErrors": ListOf(STRING),
    "imagePullPolicy": Scalar("string", _one_of("Always", "IfNotPresent", "Never")),
    "imagePullSerial": BOOL,
}
TIMEOUTS = {
    name: DURATION
    for name in (
        "controlPlaneComponentHealthCheck",
        "kubeletHealthCheck",
        "kubernetesAPICall",
        "etcdAPICall",
        "tlsBootstrap",
        "discovery",
        "upgradeManifests",
    )
}
TYPE_META = {"apiVersion": STRING, "kind": STRING}
INIT_CONFIGURATION = {
    **TYPE_META,
    "bootstrapTokens": ListOf(OPAQUE),  # bootstraptoken/v1.BootstrapToken
    "dryRun": BOOL,
    "nodeRegistration": NODE_REGISTRATION,
    "localAPIEndpoint": {"advertiseAddress": Scalar("string", _ip), "bindPort": INT},
    "certificateKey": STRING,
    "skipPhases": ListOf(STRING),
    "patches": {"directory": STRING},
    "timeouts": TIMEOUTS,
}
CLUSTER_CONFIGURATION = {
    **TYPE_META,
    "etcd": {
        "local": {
            **IMAGE_META,
            "dataDir": STRING,
            "extraArgs": ListOf(ARG),
            "extraEnvs": ListOf(OPAQUE),
            "serverCertSANs": ListOf(STRING),
            "peerCertSANs": ListOf(STRING),
        },
        "external": {
            "endpoints": ListOf(STRING),
            "httpEndpoints": ListOf(STRING),
            "caFile": STRING,
            "certFile": STRING,
            "keyFile": STRING,
        },
    },
    "networking": {
        "serviceSubnet": Scalar("string", _cidr),
        "podSubnet": Scalar("string", _cidr),
        "dnsDomain": STRING,
    },
    "kubernetesVersion": Scalar("string", _kubernetes_version),
    "controlPlaneEndpoint": Scalar("string", _host_port),
    "apiServer": {**CONTROL_PLANE_COMPONENT, "certSANs": ListOf(Scalar("string", _ip_or_dns))},
    "controllerManager": CONTROL_PLANE_COMPONENT,
    "scheduler": CONTROL_PLANE_COMPONENT,
    "dns": {**IMAGE_META, "disabled": BOOL},
    "proxy": {"disabled": BOOL},
    "certificatesDir": STRING,
    "imageRepository": STRING,
    "featureGates": MapOf(BOOL),
    "clusterName": STRING,
    "encryptionAlgorithm": Scalar(
        "string", _one_of("ECDSA-P256", "ECDSA-P384", "RSA-2048", "RSA-3072", "RSA-4096")
    ),
    "certificateValidityPeriod": DURATION,
    "caCertificateValidityPeriod": DURATION,
}
KUBELET_CONFIGURATION = {
    **TYPE_META,
    "cgroupDriver": Scalar("string", _one_of("systemd", "cgroupfs")),
    "protectKernelDefaults": BOOL,
    "fileCheckFrequency": DURATION,
}
KUBE_PROXY_CONFIGURATION = {
    **TYPE_META,
    "featureGates": MapOf(BOOL),
    "clientConnection": OPAQUE,
    "logging": OPAQUE,
    "hostnameOverride": STRING,
    "bindAddress": STRING,
    "healthzBindAddress": STRING,
    "metricsBindAddress": STRING,
    "bindAddressHardFail": BOOL,
    "enableProfiling": BOOL,
    "showHiddenMetricsForVersion": STRING,
    "serviceProxyName": STRING,
    "mode": Scalar("string", _one_of("", "iptables", "ipvs", "nftables", "kernelspace")),
    "iptables": {
        "masqueradeBit": INT,
        "masqueradeAll": BOOL,
        "localhostNodePorts": BOOL,
        "syncPeriod": DURATION,
        "minSyncPeriod": DURATION,
    },
    "ipvs": OPAQUE,
    "nftables": OPAQUE,
    "winkernel": OPAQUE,
    "detectLocalMode": STRING,
    "detectLocal": {"bridgeInterface": STRING, "interfaceNamePrefix": STRING},
    "clusterCIDR": STRING,
    "nodePortAddresses": ListOf(STRING),
    "oomScoreAdj": INT,
    "conntrack": {
        "maxPerCore": Scalar("int", lambda v: None if v >= 0 else "must be >= 0"),
        "min": Scalar("int", lambda v: None if v >= 0 else "must be >= 0"),
        "tcpEstablishedTimeout": DURATION,
        "tcpCloseWaitTimeout": DURATION,
        "tcpBeLiberal": BOOL,
        "udpTimeout": DURATION,
        "udpStreamTimeout": DURATION,
    },
    "configSyncPeriod": DURATION,
    "portRange": STRING,
}
V1BETA4 = {
    ("kubeadm.k8s.io/v1beta4", "InitConfiguration"): INIT_CONFIGURATION,
    ("kubeadm.k8s.io/v1beta4", "ClusterConfiguration"): CLUSTER_CONFIGURATION,
    ("kubelet.config.k8s.io/v1beta1", "KubeletConfiguration"): KUBELET_CONFIGURATION,
    ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration"): KUBE_PROXY_CONFIGURATION,
}


def check_fields(value: Any, spec: Any, path: str) -> list[str]:
    if spec is OPAQUE:
        return [f"{path}: not transcribed here; transcribe its Go type before rendering it"]
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {value!r}"]
        problems = [f"{path}.{key}: unknown field" for key in value if key not in spec]
        for key, item in value.items():
            if key in spec:
                problems += check_fields(item, spec[key], f"{path}.{key}")
        return problems
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        return [
            problem
            for i, item in enumerate(value)
            for problem in check_fields(item, spec.item, f"{path}[{i}]")
        ]
    if isinstance(spec, MapOf):
        if not isinstance(value, dict):
            return [f"{path}: expected a map, got {value!r}"]
        return [
            problem
            for key, item in value.items()
            for problem in check_fields(item, spec.value, f"{path}.{key}")
        ]
    assert isinstance(spec, Scalar)
    types = {"string": str, "duration": str, "int": int, "bool": bool}
    if not isinstance(value, types[spec.kind]) or (spec.kind == "int" and isinstance(value, bool)):
        return [f"{path}: expected {spec.kind}, got {value!r}"]
    if spec.kind == "duration" and not _DURATION.match(value):
        return [f"{path}: {value!r} is not a Go duration"]
    problem = spec.check(value) if spec.check else None
    return [f"{path}: {problem}"] if problem else []


def check_v1beta4(text: str) -> list[str]:
    problems = []
    for doc in yaml.safe_load_all(text):
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in V1BETA4:
            problems.append(f"{key}: not a document of a v1beta4 kubeadm file")
            continue
        problems += check_fields(doc, V1BETA4[key], key[1])
    return problems


RELEASE_VARIANTS = [
    RELEASE,
    replace(
        RELEASE,
        etcd="external",
        namespaced_sysctls_only=True,
        has_crictl=False,
        has_coredns_image=False,
        control_plane_endpoint="hv.example.net:6443",
        control_plane_timeout=None,
        cert_sans=("hv.example.net", "203.0.113.10", "2001:db8::10"),
    ),
]


@pytest.mark.parametrize("spec", RELEASE_VARIANTS, ids=["release", "every-option"])
def test_the_release_file_has_only_fields_of_the_upstream_types(spec: ClusterSpec) -> None:
    assert check_v1beta4(render(spec)) == []


@pytest.mark.parametrize(
    "where",
    [
        "InitConfiguration",
        "InitConfiguration.nodeRegistration",
        "InitConfiguration.localAPIEndpoint",
        "InitConfiguration.timeouts",
        "ClusterConfiguration",
        "ClusterConfiguration.networking",
        "ClusterConfiguration.etcd",
        "ClusterConfiguration.etcd.local",
        "ClusterConfiguration.apiServer",
        "KubeletConfiguration",
        "KubeProxyConfiguration",
    ],
)
def test_an_unknown_field_at_any_rendered_level_is_refused(where: str) -> None:
    docs = documents(render(RELEASE))
    _set(f"{where}.bogusField", "x")(docs)
    assert check_v1beta4(dump(docs)) == [f"{where}.bogusField: unknown field"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            _set("InitConfiguration.nodeRegistration.kubeletExtraArgs", {"node-ip": "203.0.113.10"}),
            "InitConfiguration.nodeRegistration.kubeletExtraArgs: expected a list",
        ),
        (
            _set("ClusterConfiguration.apiServer.timeoutForControlPlane", "300s"),
            "ClusterConfiguration.apiServer.timeoutForControlPlane: unknown field",
        ),
        (
            _set("ClusterConfiguration.useHyperKubeImage", False),
            "ClusterConfiguration.useHyperKubeImage: unknown field",
        ),
        (
            _set("ClusterConfiguration.dns", {"type": "CoreDNS"}),
            "ClusterConfiguration.dns.type: unknown field",
        ),
        (
            _set("ClusterConfiguration.networking.podSubnet", "10.244.0.0/33"),
            "ClusterConfiguration.networking.podSubnet: '10.244.0.0/33' is not a CIDR",
        ),
        (
            _set("InitConfiguration.timeouts", {"controlPlaneComponentHealthCheck": "5 minutes"}),
            "InitConfiguration.timeouts.controlPlaneComponentHealthCheck: '5 minutes' is not a Go duration",
        ),
        (
            _set("KubeProxyConfiguration.conntrack", {"maxPerCore": -1}),
            "KubeProxyConfiguration.conntrack.maxPerCore",
        ),
        (_set("KubeletConfiguration.cgroupDriver", "systemD"), "KubeletConfiguration.cgroupDriver"),
    ],
    ids=[
        "v1beta2-args",
        "v1beta2-timeout",
        "hyperkube",
        "dns-type",
        "pod-subnet",
        "duration",
        "conntrack",
        "driver",
    ],
)
def test_v1beta2_shapes_and_bad_values_are_refused_in_v1beta4(
    change: Callable[[dict[str, dict[str, Any]]], None], problem: str
) -> None:
    docs = documents(render(RELEASE))
    change(docs)
    found = check_v1beta4(dump(docs))
    assert len(found) == 1 and found[0].startswith(problem), found


# --- the production pins and Delta's settings ---------------------------------------------


def test_the_example_pins_the_release_kubeadm_renders_for(tmp_path: Path) -> None:
    text = (REPO / "settings" / "hetzner.example.toml").read_text()
    filled = tmp_path / "hetzner.toml"
    filled.write_text(filled_text(text))
    settings = load_settings(filled)
    release = settings.delta.release
    assert kubeadm_api_version(release.version) == "kubeadm.k8s.io/v1beta4"
    for name in (release.kubeadm, release.kubelet, release.kubectl):
        pin = settings.artifacts[name]
        assert pin.version == release.version
        assert pin.url == f"https://dl.k8s.io/release/v{release.version}/bin/linux/amd64/{name}"
        assert pin.dest == f"/usr/local/bin/{name}" and pin.member is None
    crictl = settings.artifacts[release.crictl]
    minor = ".".join(release.version.split(".")[:2])
    assert crictl.version.startswith(minor + "."), "kubespray pairs crictl's minor with Kubernetes'"
    assert crictl.url == (
        f"https://github.com/kubernetes-sigs/cri-tools/releases/download/v{crictl.version}/"
        f"crictl-v{crictl.version}-linux-amd64.tar.gz"
    )
    assert (crictl.member, crictl.dest) == ("crictl", "/usr/local/bin/crictl")
    # Copied from kubespray, never placeholders.
    for name in ("kubeadm", "kubelet", "kubectl", "crictl"):
        assert f"[artifacts.{name}]" in text
        assert settings.artifacts[name].sha256 != "0" * 64


def test_the_default_release_is_the_pinned_current_one() -> None:
    release = load_settings().delta.release
    assert release.version == "1.36.4"
    assert kubeadm_api_version(release.version) == "kubeadm.k8s.io/v1beta4"
    assert release.image_repository == "registry.k8s.io"
