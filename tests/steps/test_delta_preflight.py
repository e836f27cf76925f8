"""Team Delta's preflight as data: containerd's and external etcd's versions against what the
pinned Kubernetes needs, and swap (turned off, kept off, or refused on a shared kernel),
read through apply.testing's fakes. No SSH."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from apply.runner import ApplyError
from apply.testing import FakeConnection, fake_context, fake_host
from settings.loader import load_settings
from steps.delta import kubeadm_config, preflight
from steps.delta.settings import DeltaSettings

SETTINGS = load_settings()
DEBIAN_CONTAINERD = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1\n"
UPSTREAM_CONTAINERD = "containerd github.com/containerd/containerd/v2 v2.2.1 dd4cf4fd\n"
SWAPS_HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"


@pytest.mark.parametrize(
    ("kubernetes", "containerd", "supported"),
    [
        ("1.20.2", "1.6.20", True),  # scratch: Debian bookworm's containerd with the recipe
        ("1.20.2", "1.3.9", False),
        ("1.20.2", "2.0.0", False),  # no CRI v1alpha2, the only one kubelet 1.20 speaks
        ("1.35.8", "1.7.28", True),
        ("1.35.8", "1.7.24", False),
        ("1.35.8", "2.0.6", False),  # a line 1.35 is not tested with
        ("1.35.8", "2.1.5", True),
        ("1.36.4", "1.7.28", False),  # 1.36 drops containerd 1.x
        ("1.36.4", "2.1.9", False),
        ("1.36.4", "2.2.0", True),
        ("1.36.4", "2.4.0", True),  # a newer line than the table's newest
    ],
)
def test_containerd_against_the_kubernetes_support_table(
    kubernetes: str, containerd: str, supported: bool
) -> None:
    version = preflight.parse_version(containerd)
    assert version is not None
    assert preflight.containerd_supported(kubernetes, version) is supported


def test_an_unrecorded_minor_has_no_answer() -> None:
    assert preflight.containerd_supported("1.31.9", (2, 2, 0)) is None


@pytest.mark.parametrize(
    ("output", "version"),
    [(DEBIAN_CONTAINERD, (1, 6, 20)), (UPSTREAM_CONTAINERD, (2, 2, 1)), ("", None)],
)
def test_containerd_version_is_read_from_debian_and_upstream_builds(
    output: str, version: tuple[int, int, int] | None
) -> None:
    assert preflight.ContainerdVersion().parse(output) == version


def test_an_old_containerd_is_refused_before_anything_is_installed() -> None:
    conn = FakeConnection(strict=True)
    conn.set_fact(preflight.ContainerdVersion(), "containerd github.com/containerd/containerd 1.7.28 x\n")
    with pytest.raises(
        ApplyError, match=r"containerd 1\.7\.28 does not meet Kubernetes 1\.36\.4.*2\.2\.0\+, 2\.3\.0\+"
    ):
        preflight.check_containerd(fake_host(conn), "1.36.4")
    assert conn.changing_commands([preflight.ContainerdVersion()]) == []


def test_no_containerd_names_the_team_that_installs_it() -> None:
    conn = FakeConnection(strict=True)
    conn.set_fact(preflight.ContainerdVersion(), "")
    with pytest.raises(ApplyError, match="Team Bravo installs it"):
        preflight.check_containerd(fake_host(conn), "1.36.4")


def test_a_minor_without_a_recorded_requirement_is_refused_naming_where_to_add_it() -> None:
    conn = FakeConnection(strict=True)
    conn.set_fact(preflight.ContainerdVersion(), UPSTREAM_CONTAINERD)
    with pytest.raises(ApplyError, match="CONTAINERD_FOR_KUBERNETES"):
        preflight.check_containerd(fake_host(conn), "1.31.9")


APT_POLICY = "etcd-server:\n  Installed: {installed}\n  Candidate: {candidate}\n  Version table:\n"


@pytest.mark.parametrize(
    ("installed", "candidate", "refused"),
    [
        ("(none)", "3.4.30-1build1", True),  # Ubuntu 24.04's etcd-server
        ("(none)", "3.5.16-4", True),
        ("3.5.24-1", "3.6.5-1", False),  # the installed one counts
        ("(none)", "1:3.6.4-2", False),
    ],
)
def test_external_etcd_below_kubeadms_minimum_is_refused(
    installed: str, candidate: str, refused: bool
) -> None:
    conn = FakeConnection(strict=True)
    conn.set_fact(
        preflight.PackageVersions("etcd-server"), APT_POLICY.format(installed=installed, candidate=candidate)
    )
    host = fake_host(conn)
    if refused:
        with pytest.raises(ApplyError, match=r'is below 3\.5\.24.*delta\.etcd = "stacked"'):
            preflight.check_external_etcd(host, "etcd-server", "3.5.24", "1.36.4")
    else:
        preflight.check_external_etcd(host, "etcd-server", "3.5.24", "1.36.4")
        assert conn.commands == [preflight.PackageVersions("etcd-server").command]


def test_no_etcd_package_at_all_is_refused() -> None:
    conn = FakeConnection(strict=True)
    conn.set_fact(preflight.PackageVersions("etcd-server"), "")
    with pytest.raises(ApplyError, match="apt has no etcd-server"):
        preflight.check_external_etcd(fake_host(conn), "etcd-server", "3.5.24", "1.36.4")


# --- swap ------------------------------------------------------------------------------------


def _swap_conn(active: list[str], fstab: list[str]) -> FakeConnection:
    conn = FakeConnection(strict=True)
    lines = "".join(f"{path}\tfile\t\t1048572\t\t0\t\t-2\n" for path in active)
    conn.set_fact(preflight.ActiveSwaps(), SWAPS_HEADER + lines)
    conn.set_fact(preflight.FstabSwaps(), "".join(f"{path}\n" for path in fstab))
    conn.respond("swapoff -a", (0, "", ""))
    conn.respond("systemctl daemon-reload", (0, "", ""))
    conn.respond(re.compile(r"awk -v mark=.* /etc/fstab > .*"), (0, "", ""))
    return conn


def test_no_swap_is_a_no_op_that_reports_unchanged() -> None:
    conn = _swap_conn([], [])
    host = fake_host(conn)
    preflight.swap_off(host, shared_kernel=False)
    assert conn.changing_commands([preflight.ActiveSwaps(), preflight.FstabSwaps()]) == []
    assert [result.changed for result in host.changes] == []


def test_no_swap_on_a_shared_kernel_is_a_no_op_too() -> None:
    conn = _swap_conn([], [])
    host = fake_host(conn)
    preflight.swap_off(host, shared_kernel=True)
    assert conn.changing_commands([preflight.ActiveSwaps(), preflight.FstabSwaps()]) == []
    assert host.changes == []


def test_swap_in_use_is_turned_off_and_kept_off_at_boot() -> None:
    conn = _swap_conn(["/swap.img"], ["/swap.img"])
    host = fake_host(conn)
    preflight.swap_off(host, shared_kernel=False)
    ran = conn.changing_commands([preflight.ActiveSwaps(), preflight.FstabSwaps()])
    assert ran[0] == "swapoff -a"
    assert preflight.FSTAB_MARK in ran[1] and '$3 == "swap"' in ran[1] and ran[2] == "systemctl daemon-reload"
    assert len(host.changes) == 2


def test_check_mode_only_records_what_it_would_do() -> None:
    conn = _swap_conn(["/dev/sda2"], ["UUID=1234"])
    host = fake_host(conn, mode="check")
    preflight.swap_off(host, shared_kernel=False)
    assert conn.changing_commands([preflight.ActiveSwaps(), preflight.FstabSwaps()]) == []
    assert len(host.changes) == 2


def test_swap_in_use_on_a_shared_kernel_is_refused_never_turned_off() -> None:
    conn = _swap_conn(["/dev/zram0"], [])
    with pytest.raises(ApplyError, match=r'shares with the machine running it.*delta\.swap = "allow"'):
        preflight.swap_off(fake_host(conn), shared_kernel=True)
    assert "swapoff -a" not in conn.commands


def test_the_node_preflight_on_scratch_reads_and_changes_nothing() -> None:
    conn = _swap_conn([], [])
    conn.set_fact(preflight.ContainerdVersion(), DEBIAN_CONTAINERD)
    ctx = fake_context(fake_host(conn), SETTINGS, profile="scratch")
    preflight.node(ctx, source="recipe", version="1.20.2")
    assert (
        conn.changing_commands(
            [preflight.ActiveSwaps(), preflight.FstabSwaps(), preflight.ContainerdVersion()]
        )
        == []
    )
    # The recipe's external etcd is not checked (kubeadm 1.20's preflight is skipped there).
    assert not any("apt-cache policy" in command for command in conn.commands)


def test_the_node_preflight_of_a_release_with_external_etcd_checks_it() -> None:
    conn = _swap_conn([], [])
    conn.set_fact(preflight.ContainerdVersion(), UPSTREAM_CONTAINERD)
    conn.set_fact(
        preflight.PackageVersions("etcd-server"), APT_POLICY.format(installed="(none)", candidate="3.4.30-1")
    )
    settings = SETTINGS.model_copy(update={"delta": DeltaSettings(etcd="external")})
    with pytest.raises(ApplyError, match=r"etcd-server 3\.4\.30-1 is below 3\.5\.24"):
        preflight.node(fake_context(fake_host(conn), settings), source="release", version="1.36.4")


def test_swap_allowed_leaves_swap_alone() -> None:
    conn = FakeConnection(strict=True)
    conn.set_fact(preflight.ContainerdVersion(), UPSTREAM_CONTAINERD)
    settings = SETTINGS.model_copy(update={"delta": DeltaSettings(swap="allow")})
    preflight.node(fake_context(fake_host(conn), settings), source="release", version="1.36.4")
    assert conn.commands == [preflight.ContainerdVersion().command]


# --- kubelet configured for swap ("allow") ---------------------------------------------------


def _kubelet_doc(version: str, fail_swap_on: bool) -> dict[str, Any]:
    spec = kubeadm_config.ClusterSpec(
        version=version,
        node_name="node",
        advertise_address="192.0.2.10",
        bind_port=6443,
        cluster_name="hvsuite",
        pod_subnet="10.244.0.0/16",
        service_subnet="10.96.0.0/12",
        image_repository="registry.k8s.io",
        etcd="stacked",
        cert_sans=(),
        namespaced_sysctls_only=False,
        has_crictl=True,
        has_coredns_image=True,
        fail_swap_on=fail_swap_on,
    )
    docs = list(yaml.safe_load_all(kubeadm_config.render(spec)))
    return next(doc for doc in docs if doc["kind"] == "KubeletConfiguration")


def test_kubelet_keeps_its_default_where_swap_is_turned_off() -> None:
    for version in ("1.20.2", "1.36.4"):
        doc = _kubelet_doc(version, fail_swap_on=True)
        assert "failSwapOn" not in doc and "memorySwap" not in doc


def test_kubelet_runs_with_swap_on_and_keeps_pods_off_it_where_allowed() -> None:
    assert _kubelet_doc("1.36.4", fail_swap_on=False)["memorySwap"] == {"swapBehavior": "NoSwap"}
    assert _kubelet_doc("1.36.4", fail_swap_on=False)["failSwapOn"] is False
    # 1.20's KubeletConfiguration has failSwapOn, and no memorySwap yet.
    old = _kubelet_doc("1.20.2", fail_swap_on=False)
    assert old["failSwapOn"] is False and "memorySwap" not in old
