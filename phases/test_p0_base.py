"""Phase 0, Base: the plan's "base installation complete" (install-all.sh), owned by the suite.

Apply: check CPU virtualization and /dev/kvm; install firecracker, cloud-hypervisor,
flintlockd and a test kernel + rootfs from pinned, checksummed artifacts; write the
flintlockd unit (parent interface detected, bridge flkbr0) without enabling or starting it.
flintlockd needs its TLS certificate (Alpha) and containerd with the devmapper snapshotter
(Bravo), so Bravo's "Flintlock runtime" task starts it and proves the gRPC port from outside.

Verify: the CPU and /dev/kvm; versions match the pins; the unit loads, is sound and never
insecure; a firecracker microVM boots to a marker on its serial console within a bound.
Waivers: kvm, upstream-artifacts (a scratch server has neither).
"""

from __future__ import annotations

import pytest

from apply.api import Applied, Context
from checks import probes
from engine import apply_fixture, task
from settings.model import Settings
from steps.base import flintlock, hypervisors

pytestmark = pytest.mark.smoke


@apply_fixture
def applied_binaries(ctx: Context) -> Applied:
    return hypervisors.apply(ctx)


@apply_fixture
def applied_flintlock_unit(ctx: Context, applied_binaries: Applied) -> Applied:
    return flintlock.unit(ctx)


@task("Virtualization")
@pytest.mark.requires("kvm")
def test_cpu_virtualization_and_kvm_device(host) -> None:
    found = probes.read_fact(host, hypervisors.VirtualizationFact())
    assert hypervisors.virtualization_problems(found) == []
    assert host.file("/dev/kvm").is_character_device


@task("Hypervisor binaries")
@pytest.mark.requires("upstream-artifacts")
@pytest.mark.parametrize("role", ["firecracker", "cloud-hypervisor", "flintlockd"])
def test_binary_version_matches_its_pin(host, settings: Settings, applied_binaries, role: str) -> None:
    pin = hypervisors.pins(settings)[role]
    output = host.check_output(hypervisors.version_command(role, pin))
    assert hypervisors.same_version(hypervisors.parse_version(output), pin.version), (
        f"{pin.dest} reports {output!r}, pinned {pin.version}"
    )
    assert host.file(pin.dest).sha256sum == pin.sha256 or pin.member is not None


@task("Flintlock service")
@pytest.mark.requires("upstream-artifacts")
def test_flintlockd_unit_is_loaded_tls_only_and_on_the_host_network(
    host, settings: Settings, applied_flintlock_unit
) -> None:
    assert host.check_output(f"systemctl show -p LoadState --value {flintlock.UNIT}") == "loaded"
    exec_start = host.check_output(flintlock.EXEC_START)
    assert flintlock.tls_only(exec_start), exec_start
    parent = flintlock.parent_iface_of(exec_start)
    assert parent and host.interface(parent).exists, f"parent interface {parent} does not exist"
    assert host.interface(settings.base.bridge).exists
    host.run_expect([0], f"systemd-analyze verify {flintlock.UNIT_FILE}")


@task("MicroVM boot")
@pytest.mark.requires("kvm")
@pytest.mark.requires("upstream-artifacts")
@pytest.mark.full
def test_a_firecracker_microvm_boots_to_its_marker(remote, settings: Settings, applied_binaries) -> None:
    result = flintlock.boot_microvm(remote, settings)
    assert result.exit_code == 0, result.stdout[-4000:]
