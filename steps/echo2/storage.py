"""Team Echo-2: storage for pods on the node.

The host gets one directory per configured volume under ``echo2.root``: plain directories,
or (layout "lvm") one ext4 logical volume per volume in a volume group on the configured
block devices, mounted at that directory through /etc/fstab. The cluster gets a default
StorageClass without a provisioner (binding waits for the first pod) and one static
``local`` PersistentVolume per volume, pinned to this node. Where the profile does not waive
``csi-snapshots``, the pinned snapshot CRDs, snapshot controller and a snapshot-capable CSI
driver are applied too, with a StorageClass on that driver and a VolumeSnapshotClass.

Every document is rendered by a pure function here, so the project's tests validate them
offline (``kubernetes-validate`` for the core kinds; :func:`snapshot_errors` with the
suite's own schema for the snapshot.storage.k8s.io/v1 kinds).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from apply import ops
from apply.api import Context, step
from apply.facts import CommandSucceeds, Fact
from apply.runner import ApplyError, Host
from steps.delta.kubectl import MANAGED_BY, apply_manifest, kubectl, pinned_documents, wait
from steps.delta.kubernetes import node_name
from steps.echo2.settings import Echo2Settings, StorageVolume

DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
NO_PROVISIONER = "kubernetes.io/no-provisioner"
SNAPSHOT_API = "snapshot.storage.k8s.io/v1"
SCHEMA_FILE = Path(__file__).parent / "schemas" / "snapshot.storage.k8s.io-v1.json"
FSTAB = "/etc/fstab"
# The manifests' names under steps.delta.kubectl.MANIFEST_DIR.
STORAGE_MANIFEST = "echo2-storage"
SNAPSHOT_MANIFEST = "echo2-snapshot-classes"


# -- rendered documents (pure) -----------------------------------------------------------


def storage_class(echo2: Echo2Settings) -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": echo2.storage_class,
            "labels": dict(MANAGED_BY),
            "annotations": {DEFAULT_CLASS: "true"},
        },
        "provisioner": NO_PROVISIONER,
        "reclaimPolicy": echo2.reclaim_policy,
        "volumeBindingMode": "WaitForFirstConsumer",
    }


def persistent_volume(echo2: Echo2Settings, volume: StorageVolume, node: str) -> dict[str, Any]:
    """A static local PV. Every field the API server would default is written out
    (volumeMode), so ``kubectl diff`` stays empty; claimRef is the controller's and is left
    out, so ``kubectl apply`` never touches it."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": volume.name, "labels": {**MANAGED_BY, "hvsuite.io/volume": volume.name}},
        "spec": {
            "capacity": {"storage": volume.size},
            "volumeMode": "Filesystem",
            "accessModes": list(volume.access_modes),
            "persistentVolumeReclaimPolicy": echo2.reclaim_policy,
            "storageClassName": echo2.storage_class,
            "local": {"path": echo2.volume_dir(volume)},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                            ]
                        }
                    ]
                }
            },
        },
    }


def storage_documents(echo2: Echo2Settings, node: str) -> list[dict[str, Any]]:
    return [storage_class(echo2), *(persistent_volume(echo2, v, node) for v in echo2.volumes)]


def claim(
    name: str,
    namespace: str,
    storage_class_name: str,
    size: str,
    *,
    data_source: str | None = None,
) -> dict[str, Any]:
    """A PVC; with ``data_source``, restored from the VolumeSnapshot of that name."""
    spec: dict[str, Any] = {
        "storageClassName": storage_class_name,
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    }
    if data_source is not None:
        spec["dataSource"] = {
            "apiGroup": SNAPSHOT_API.split("/")[0],
            "kind": "VolumeSnapshot",
            "name": data_source,
        }
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "spec": spec,
    }


def csi_storage_class(echo2: Echo2Settings) -> dict[str, Any]:
    """The CSI driver's StorageClass (not the default): snapshots exist for CSI volumes only."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": echo2.csi_storage_class, "labels": dict(MANAGED_BY)},
        "provisioner": echo2.csi_driver,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }


def snapshot_class(echo2: Echo2Settings) -> dict[str, Any]:
    return {
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshotClass",
        "metadata": {"name": echo2.snapshot_class, "labels": dict(MANAGED_BY)},
        "driver": echo2.csi_driver,
        "deletionPolicy": echo2.snapshot_deletion_policy,
    }


def volume_snapshot(echo2: Echo2Settings, name: str, namespace: str, source_claim: str) -> dict[str, Any]:
    return {
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "spec": {
            "volumeSnapshotClassName": echo2.snapshot_class,
            "source": {"persistentVolumeClaimName": source_claim},
        },
    }


@dataclass(frozen=True)
class SnapshotRound:
    """What the snapshot check creates: a snapshot of ``source`` and a claim restored from it."""

    snapshot: dict[str, Any]
    restored: dict[str, Any]


def snapshot_round(
    echo2: Echo2Settings, namespace: str, source_claim: str, size: str, *, suffix: str = ""
) -> SnapshotRound:
    snapshot = volume_snapshot(echo2, f"{source_claim}-snap{suffix}", namespace, source_claim)
    restored = claim(
        f"{source_claim}-restored{suffix}",
        namespace,
        echo2.csi_storage_class,
        size,
        data_source=snapshot["metadata"]["name"],
    )
    return SnapshotRound(snapshot, restored)


@cache
def _snapshot_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def snapshot_errors(document: dict[str, Any]) -> list[str]:
    """What is wrong with a snapshot.storage.k8s.io/v1 document ([] when it is valid)."""
    kind = document.get("kind")
    schema = _snapshot_schema()
    if kind not in schema["$defs"] or kind in ("name", "metadata"):
        return [f"kind {kind!r} is not a snapshot.storage.k8s.io/v1 kind the suite renders"]
    validator = jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{kind}"})
    return [
        f"{kind} {'.'.join(map(str, error.absolute_path)) or '(document)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]


# -- host layout -------------------------------------------------------------------------


@dataclass(frozen=True)
class LvmDevices(Fact[dict[str, str]]):
    """LVM's physical volumes: device -> its volume group ("" when in none)."""

    @property
    def command(self) -> str:
        return "pvs --noheadings --separator '|' -o pv_name,vg_name 2>/dev/null || true"

    def parse(self, output: str) -> dict[str, str]:
        found = {}
        for line in output.splitlines():
            device, _, group = line.strip().partition("|")
            if device:
                found[device] = group.strip()
        return found


@dataclass(frozen=True)
class LogicalVolumes(Fact[dict[str, int]]):
    """The LVs of a volume group: name -> size in bytes ({} when the group does not exist)."""

    group: str

    @property
    def command(self) -> str:
        return (
            "lvs --noheadings --separator '|' --units b --nosuffix -o lv_name,lv_size "
            f"{shlex.quote(self.group)} 2>/dev/null || true"
        )

    def parse(self, output: str) -> dict[str, int]:
        found = {}
        for line in output.splitlines():
            name, _, size = line.strip().partition("|")
            if name and size.strip().isdigit():
                found[name] = int(size)
        return found


_UNITS = {"Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


def size_bytes(size: str) -> int:
    return int(size[:-2]) * _UNITS[size[-2:]]


def lv_device(echo2: Echo2Settings, volume: StorageVolume) -> str:
    return f"/dev/{echo2.volume_group}/{volume.name}"


def fstab_line(echo2: Echo2Settings, volume: StorageVolume) -> str:
    # nofail: a missing disk must not keep the host from booting (the PV then fails its pod).
    return f"{lv_device(echo2, volume)} {echo2.volume_dir(volume)} ext4 defaults,nofail 0 2"


def wipe_command(echo2: Echo2Settings, path: str) -> str:
    """Empties a volume's directory (a filesystem's lost+found stays); refuses any path that
    is not one of the configured volumes' directories."""
    if path not in {echo2.volume_dir(v) for v in echo2.volumes}:
        raise ValueError(f"{path!r} is not a volume directory of echo2.volumes under {echo2.root}")
    q = shlex.quote(path)
    return f"find {q} -mindepth 1 -maxdepth 1 ! -name lost+found -exec rm -rf -- {{}} +"


def _directories(host: Host, echo2: Echo2Settings) -> None:
    for volume in echo2.volumes:
        ops.directory(host, echo2.volume_dir(volume), mode=echo2.volume_mode)


def _lvm(host: Host, echo2: Echo2Settings) -> None:
    ops.packages(host, ["lvm2"])
    group = echo2.volume_group
    members = host.fact(LvmDevices())
    foreign = {d: members[d] for d in echo2.devices if members.get(d) not in (None, "", group)}
    if foreign:
        taken = ", ".join(f"{d} (in {g})" for d, g in sorted(foreign.items()))
        raise ApplyError(
            f"[{host.name}] echo2.devices: {taken} belong to another volume group; nothing was changed"
        )
    in_group = [d for d, g in members.items() if g == group]
    missing = [d for d in echo2.devices if d not in in_group]
    devices = " ".join(map(shlex.quote, missing))
    if not in_group:
        host.execute(f"volume group {group}", [f"vgcreate --yes {shlex.quote(group)} {devices}"])
    else:
        host.execute(
            f"volume group {group}", [f"vgextend --yes {shlex.quote(group)} {devices}"] if missing else []
        )
    volumes = host.fact(LogicalVolumes(group))
    for volume in echo2.volumes:
        device = lv_device(echo2, volume)
        want = size_bytes(volume.size)
        megabytes = f"{want // 1024**2}m"
        commands = []
        if volume.name not in volumes:
            commands.append(
                f"lvcreate --yes -n {shlex.quote(volume.name)} -L {megabytes} {shlex.quote(group)}"
            )
        elif volumes[volume.name] < want:
            # Grows the filesystem with it (-r); an LV is never shrunk.
            commands.append(f"lvextend -r -L {megabytes} {shlex.quote(device)}")
        if volume.name not in volumes or not host.fact(CommandSucceeds(f"blkid -t TYPE=ext4 {device}")):
            commands.append(f"blkid {device} >/dev/null || mkfs.ext4 -q -L {volume.name[:16]} {device}")
        host.execute(f"logical volume {device} ({volume.size}, ext4)", commands)
        directory = echo2.volume_dir(volume)
        ops.directory(host, directory, mode=echo2.volume_mode)
        ops.line(host, FSTAB, fstab_line(echo2, volume), regex=rf"^\S+\s+{re.escape(directory)}\s")
        ops.command(
            host, f"mount {directory}", unless=f"mountpoint -q {directory}", name=f"mount {directory}"
        )
        # The mounted filesystem's root, as the pods see it.
        ops.directory(host, directory, mode=echo2.volume_mode)


def layout(ctx: Context) -> None:
    """The host's volumes as the configured layout wants them."""
    host, echo2 = ctx.host, ctx.settings.echo2
    ops.directory(host, echo2.root, mode="0700")
    if echo2.resolved_layout(ctx.profile) == "lvm":
        if not echo2.devices:
            raise ApplyError(
                f"[{host.name}] echo2.layout resolves to lvm (profile {ctx.profile} does not waive "
                'devmapper) but echo2.devices is empty: list the block devices, or set layout = "directories"'
            )
        _lvm(host, echo2)
    else:
        _directories(host, echo2)


# -- snapshots (production) --------------------------------------------------------------


def snapshots(ctx: Context) -> None:
    """CRDs, then the controller and the CSI driver, then the suite's two classes."""
    host, echo2 = ctx.host, ctx.settings.echo2
    _check_snapshot_pins(ctx)
    for key in echo2.snapshot_crds:
        apply_manifest(host, f"echo2-{key}", pinned_documents(ctx, key))
    if host.mode == "apply":
        crds = [
            f"crd/{kind}.snapshot.storage.k8s.io" for kind in ("volumesnapshotclasses", "volumesnapshots")
        ]
        wait(
            host,
            "the snapshot CRDs established",
            kubectl("wait", "--for=condition=established", "--timeout=10s", *crds),
            echo2.bind_timeout,
        )
    for key in echo2.snapshot_components:
        apply_manifest(host, f"echo2-{key}", pinned_documents(ctx, key))
    classes = [csi_storage_class(echo2), snapshot_class(echo2)]
    problems = snapshot_errors(classes[1])
    if problems:
        raise ApplyError(f"[{host.name}] rendered VolumeSnapshotClass is invalid: {'; '.join(problems)}")
    apply_manifest(host, SNAPSHOT_MANIFEST, classes)


def _check_snapshot_pins(ctx: Context) -> None:
    echo2 = ctx.settings.echo2
    missing = [
        k for k in (*echo2.snapshot_crds, *echo2.snapshot_components) if k not in ctx.settings.artifacts
    ]
    if missing:
        raise ApplyError(
            f"[{ctx.host.name}] profile {ctx.profile} does not waive csi-snapshots, but [artifacts] has no "
            f"pin for {', '.join(missing)} (named by echo2.snapshot_crds / echo2.snapshot_components)"
        )


@step("Storage (host volumes, StorageClass, PersistentVolumes)")
def apply(ctx: Context) -> None:
    snapshots_wanted = not ctx.profile.waives("csi-snapshots")
    if snapshots_wanted:
        # Before anything changes: a production run without the pins stops here.
        _check_snapshot_pins(ctx)
    layout(ctx)
    apply_manifest(ctx.host, STORAGE_MANIFEST, storage_documents(ctx.settings.echo2, node_name(ctx)))
    if snapshots_wanted:
        snapshots(ctx)
