"""Base: CPU virtualization and /dev/kvm, the hypervisor binaries (firecracker,
cloud-hypervisor, flintlockd) and a test kernel + rootfs at pinned versions from checked
artifacts (``apply.artifacts``)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from apply import artifacts
from apply.api import Context, step
from apply.facts import Fact
from apply.runner import ApplyError, Host
from settings.base import ArtifactPin
from settings.model import Settings
from steps.base.settings import BaseSettings

VERSION_COMMANDS = {
    # firecracker and cloud-hypervisor print "<name> v1.10.0"; flintlockd prints its version.
    "firecracker": "{bin} --version",
    "cloud-hypervisor": "{bin} --version",
    "flintlockd": "{bin} version",
}


@dataclass(frozen=True)
class Virtualization:
    cpu_flag: str | None  # "vmx" (Intel VT-x), "svm" (AMD-V) or None
    kvm_device: bool


@dataclass(frozen=True)
class VirtualizationFact(Fact[Virtualization]):
    @property
    def command(self) -> str:
        return (
            "grep -owE 'vmx|svm' /proc/cpuinfo | sort -u | head -n 1; "
            "if [ -c /dev/kvm ]; then echo kvm=yes; else echo kvm=no; fi"
        )

    def parse(self, output: str) -> Virtualization:
        lines = output.split()
        flag = next((line for line in lines if line in ("vmx", "svm")), None)
        return Virtualization(flag, "kvm=yes" in lines)


def virtualization_problems(virt: Virtualization) -> list[str]:
    problems = []
    if virt.cpu_flag is None:
        problems.append("the CPU shows neither vmx nor svm: enable VT-x/AMD-V in the firmware")
    if not virt.kvm_device:
        problems.append("/dev/kvm is missing: load kvm_intel or kvm_amd (modprobe) and check dmesg")
    return problems


def require_virtualization(host: Host) -> Virtualization:
    virt = host.fact(VirtualizationFact())
    problems = virtualization_problems(virt)
    if problems:
        raise ApplyError(f"[{host.name}] no hardware virtualization: {'; '.join(problems)}")
    return virt


def pins(settings: Settings) -> dict[str, ArtifactPin]:
    """The artifacts Base installs, by role; a clear error names any that is not declared."""
    base: BaseSettings = settings.base
    wanted = {
        "firecracker": base.firecracker,
        "cloud-hypervisor": base.cloud_hypervisor,
        "flintlockd": base.flintlockd,
        "microvm-kernel": base.microvm_kernel,
        "microvm-rootfs": base.microvm_rootfs,
    }
    missing = [name for name in wanted.values() if name not in settings.artifacts]
    if missing:
        raise ApplyError(
            "Base needs these artifacts declared in the config: "
            + ", ".join(f"[artifacts.{name}]" for name in missing)
            + " (each with version, url, sha256 and dest; see settings/hetzner.example.toml)"
        )
    return {role: settings.artifacts[name] for role, name in wanted.items()}


@step("Hypervisor binaries")
def apply(ctx: Context) -> None:
    """firecracker, cloud-hypervisor, flintlockd and the microVM kernel and rootfs, each from
    its checked artifact."""
    settings = ctx.settings
    store = ctx.require_artifacts()
    names = {
        "firecracker": settings.base.firecracker,
        "cloud-hypervisor": settings.base.cloud_hypervisor,
        "flintlockd": settings.base.flintlockd,
        "microvm-kernel": settings.base.microvm_kernel,
        "microvm-rootfs": settings.base.microvm_rootfs,
    }
    for role, pin in pins(settings).items():
        artifacts.install(ctx.host, store, names[role], pin)


_VERSION = re.compile(r"v?(\d+(?:\.\d+)+)")


def parse_version(output: str) -> str | None:
    match = _VERSION.search(output)
    return match.group(1) if match else None


def same_version(found: str | None, pinned: str) -> bool:
    """1.10.0 == v1.10.0; 49.0 == 49.0.0 (cloud-hypervisor tags omit the patch level)."""
    if found is None:
        return False
    want = parse_version(pinned)
    if want is None:
        return False

    def parts(text: str) -> list[int]:
        numbers = [int(p) for p in text.split(".")]
        return numbers + [0] * (3 - len(numbers))

    return parts(found) == parts(want)


def version_command(role: str, pin: ArtifactPin) -> str:
    return VERSION_COMMANDS[role].format(bin=shlex.quote(pin.dest)) + " 2>&1"
