"""The production example (settings/hetzner.example.toml) and the rules that hold a config's
sections to each other before anything runs: each rule is shown passing on the example and
failing on the one change it exists to catch. The example's FILL-IN placeholders are refused
by the loader; the tests fill them with a dummy digest, as tests/targets/test_loader.py does."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from settings.loader import ConfigError, load_settings
from tests.support.example import filled_text

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "settings" / "hetzner.example.toml"
TEXT = EXAMPLE.read_text()


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("production") / "hetzner.toml"
    path.write_text(filled_text(TEXT))
    return path


def problems(path: Path, overrides: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, overrides)
    return caught.value.problems


def ports_without(port: int, proto: str = "tcp") -> list[dict[str, Any]]:
    rules = tomllib.loads(TEXT)["ports"]
    kept = [rule for rule in rules if (rule["port"], rule.get("proto", "tcp")) != (port, proto)]
    assert len(kept) == len(rules) - 1, f"the example declares {port}/{proto} once"
    return kept


def test_the_example_loads_once_its_placeholders_are_filled(filled: Path) -> None:
    settings = load_settings(filled)
    assert settings.target.profile == "production"
    assert settings.delta.release.version == "1.36.4"
    assert settings.bravo.cni_bin_dir == "/opt/cni/bin"


def test_placeholders_are_left_only_for_release_assets_and_each_is_documented() -> None:
    data = tomllib.loads(TEXT)
    left = sorted(name for name, pin in data["artifacts"].items() if pin["sha256"].startswith("FILL-IN-"))
    assert left == [
        "cloud-hypervisor",
        "firecracker",
        "flintlockd",
        "grafana",
        "microvm-kernel",
        "microvm-rootfs",
    ]
    for name in left:
        # Never a file of a git repository: those are computed and cited.
        assert "raw.githubusercontent.com" not in data["artifacts"][name]["url"], name
    guide = (REPO / "docs" / "production.md").read_text()
    for name in left:
        assert f"`{name}`" in guide, f"docs/production.md does not say how to obtain {name}'s sha256"


def test_every_file_of_a_repository_is_pinned_at_a_cited_tag_and_commit() -> None:
    data = tomllib.loads(TEXT)
    raw = {name: pin for name, pin in data["artifacts"].items() if "raw.githubusercontent.com" in pin["url"]}
    assert len(raw) == 14
    for name, pin in raw.items():
        owner, repo, tag, _path = re.fullmatch(
            r"https://raw\.githubusercontent\.com/([^/]+)/([^/]+)/([^/]+)/(.+)", pin["url"]
        ).groups()  # type: ignore[union-attr]
        assert tag == "v" + pin["version"].removeprefix("v"), name
        # The comment block right above the pin cites repository, tag and commit.
        block = TEXT.split(f"[artifacts.{name}]")[0].rsplit("\n\n", 1)[-1]
        assert f"{owner}/{repo}" in block and tag in block, name
        assert re.search(r"commit\s+[0-9a-f]{40}", block), name


def test_the_release_binaries_cite_kubespray_at_a_commit(filled: Path) -> None:
    settings = load_settings(filled)
    block = TEXT.split("[artifacts.kubeadm]")[0].rsplit("[[ports]]", 1)[-1]
    assert "kubernetes-sigs/kubespray" in block and "checksums.yml" in block
    assert re.search(r"commit\s+[0-9a-f]{40}", block)
    for name in ("kubeadm", "kubelet", "kubectl", "crictl"):
        assert settings.artifacts[name].sha256 != "0" * 64, name


# --- the container runtime looks where the CNI installs its plugins --------------------------


def test_calico_with_containerd_looking_elsewhere_is_refused(filled: Path) -> None:
    (found,) = problems(filled, {"bravo.cni_bin_dir": "/usr/lib/cni"})
    assert "bravo.cni_bin_dir is /usr/lib/cni" in found
    assert 'Fix: set bravo.cni_bin_dir = "/opt/cni/bin"' in found


def test_the_bridge_chain_keeps_the_distributions_directory(filled: Path) -> None:
    settings = load_settings(
        filled, {"bravo.cni_bin_dir": "/usr/lib/cni", "echo1.pod_network.plugin": "bridge"}
    )
    assert settings.bravo.cni_bin_dir == "/usr/lib/cni"


def test_the_bridge_chain_with_containerd_looking_elsewhere_is_refused(filled: Path) -> None:
    # The example's /opt/cni/bin holds Calico's plugins, not the OS package's bridge chain.
    (found,) = problems(filled, {"echo1.pod_network.plugin": "bridge"})
    assert "bravo.cni_bin_dir is /opt/cni/bin" in found
    assert 'Fix: set bravo.cni_bin_dir = "/usr/lib/cni"' in found


# --- every listener beyond loopback is declared ----------------------------------------------


@pytest.mark.parametrize(
    ("port", "proto", "team", "what"),
    [
        (2379, "tcp", "Delta", "etcd (clients)"),
        (2380, "tcp", "Delta", "etcd (peers)"),
        (10250, "tcp", "Delta", "kubelet's API"),
        (179, "tcp", "Echo-1", "Calico's BIRD"),
        (7946, "tcp", "Echo-1", "MetalLB's speaker (memberlist)"),
        (7946, "udp", "Echo-1", "MetalLB's speaker (memberlist)"),
        (9120, "tcp", "Echo-1", "MetalLB 0.16.1's speaker (metrics)"),
    ],
)
def test_an_undeclared_listener_is_refused(filled: Path, port: int, proto: str, team: str, what: str) -> None:
    (found,) = problems(filled, {"ports": ports_without(port, proto)})
    assert f"{what}" in found and f"listens on {port}/{proto} beyond loopback" in found
    assert f'team = "{team}", port = {port}, proto = "{proto}"' in found


def test_external_etcd_of_one_node_listens_on_loopback_and_needs_no_declaration(filled: Path) -> None:
    data = tomllib.loads(TEXT)
    rules = [rule for rule in data["ports"] if rule["port"] not in (2379, 2380)]
    single = [host for host in data["hosts"] if "control-plane" not in host["roles"]]
    settings = load_settings(filled, {"delta.etcd": "external", "ports": rules, "hosts": single})
    assert settings.delta.etcd == "external"


def test_external_etcd_with_members_on_other_hosts_must_declare_its_ports(filled: Path) -> None:
    rules = [rule for rule in tomllib.loads(TEXT)["ports"] if rule["port"] not in (2379, 2380)]
    found = problems(filled, {"delta.etcd": "external", "ports": rules})
    assert any("etcd (clients) listens on 2379/tcp" in line for line in found), found
    assert any("etcd (peers) listens on 2380/tcp" in line for line in found), found


def test_metallb_before_0_16_has_its_metrics_on_7472(filled: Path) -> None:
    url = "https://raw.githubusercontent.com/metallb/metallb/v0.15.3/config/manifests/metallb-native.yaml"
    (found,) = problems(
        filled, {"artifacts.metallb-manifest.version": "0.15.3", "artifacts.metallb-manifest.url": url}
    )
    assert "listens on 7472/tcp" in found and "MetalLB 0.15.3" in found


# --- a pin fetches the file its version and checksum are of ----------------------------------


def test_a_binary_of_another_release_than_delta_release_is_refused(filled: Path) -> None:
    url = "https://dl.k8s.io/release/v1.35.8/bin/linux/amd64/kubelet"
    (found,) = problems(filled, {"artifacts.kubelet.version": "1.35.8", "artifacts.kubelet.url": url})
    assert "artifacts.kubelet: version 1.35.8, but delta.release.version is 1.36.4" in found


def test_a_version_bumped_without_its_url_is_refused(filled: Path) -> None:
    (found,) = problems(filled, {"artifacts.calico-manifest.version": "3.31.8"})
    assert "artifacts.calico-manifest: version 3.31.8 does not appear in its url" in found


def test_external_snapshotter_files_of_two_releases_are_refused(filled: Path) -> None:
    url = (
        "https://raw.githubusercontent.com/kubernetes-csi/external-snapshotter/v8.2.0/"
        "deploy/kubernetes/csi-snapshotter/rbac-csi-snapshotter.yaml"
    )
    (found,) = problems(
        filled,
        {"artifacts.csi-snapshotter-rbac.version": "v8.2.0", "artifacts.csi-snapshotter-rbac.url": url},
    )
    assert "external-snapshotter files are of different releases" in found
    assert "csi-snapshotter-rbac v8.2.0" in found


# --- configs that pin none of it are not judged -----------------------------------------------


def test_scratch_and_unpinned_production_configs_are_not_judged() -> None:
    assert load_settings().bravo.cni_bin_dir == "/usr/lib/cni"
    # Production named, nothing pinned: a run would stop at the first fetch, naming the pin.
    assert load_settings(None, {"target.profile": "production"}).target.profile == "production"
