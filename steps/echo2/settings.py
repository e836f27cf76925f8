"""The settings of Team Echo-2 (the config's [echo2] section): host storage, the default
StorageClass, PersistentVolumes, snapshots."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from settings.base import EffectiveProfile, Strict, TeamSettings, Waiver
from steps.delta.settings import configured_profile, pinned, unversioned_pins

# The repository whose CRDs, controller and csi-snapshotter RBAC must come from one release.
EXTERNAL_SNAPSHOTTER = "/kubernetes-csi/external-snapshotter/"

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


class Echo2Settings(TeamSettings):
    """Team Echo-2: host storage, the default StorageClass, PersistentVolumes, snapshots."""

    section: ClassVar[str] = "echo2"

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

    def problems_with(self, config: Any) -> list[str]:
        # The snapshot stack where this config runs it (csi-snapshots not waived, pinned).
        keys = [*self.snapshot_crds, *self.snapshot_components]
        if configured_profile(config).waives(Waiver.CSI_SNAPSHOTS) or not pinned(config, keys):
            return []
        problems = unversioned_pins(config, keys)
        snapshotter = {
            key: config.artifacts[key].version
            for key in keys
            if EXTERNAL_SNAPSHOTTER in config.artifacts[key].url
        }
        if len(set(snapshotter.values())) > 1:
            listed = ", ".join(f"{key} {version}" for key, version in snapshotter.items())
            problems.append(
                f"artifacts: the external-snapshotter files are of different releases ({listed}): the "
                "CRDs, the controller and the csi-snapshotter RBAC must come from one. Fix: pin them all "
                "at one tag (the csi-snapshotter image the driver manifest runs, docs/production.md)"
            )
        return problems

    def resolved_layout(self, profile: EffectiveProfile) -> Literal["directories", "lvm"]:
        if self.layout == "auto":
            return "directories" if profile.waives(Waiver.DEVMAPPER) else "lvm"
        return self.layout

    def volume_dir(self, volume: StorageVolume) -> str:
        return f"{self.root.rstrip('/')}/{volume.name}"
