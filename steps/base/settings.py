"""The settings of Team Base (the config's [base] section): the hypervisor binaries, flintlock's
bridge and unit, the microVM boot."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from settings.base import TeamSettings


class BaseSettings(TeamSettings):
    section: ClassVar[str] = "base"

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
