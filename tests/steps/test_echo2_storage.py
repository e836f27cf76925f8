"""Team Echo-2's steps as data: the settings it accepts, the documents it renders (validated
offline against Kubernetes' schemas and the suite's snapshot schema), and the commands it
would run on a host. No SSH (see apply.testing)."""

from __future__ import annotations

import copy
import re

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from apply.facts import CommandSucceeds, DebPackages, FileInfo
from apply.testing import FakeConnection, fake_context, fake_host
from settings.loader import load_settings
from settings.model import Settings
from steps.delta.kubectl import KUBECTL, MANIFEST_DIR
from steps.echo2 import storage
from steps.echo2.settings import Echo2Settings, StorageVolume

SETTINGS = load_settings()
ECHO2 = SETTINGS.echo2
NODE = "e2dev-host1"
# The production release's schemas (kubernetes-validate knows 1.25 on), strict: unknown
# fields are errors.
K8S_VERSION = SETTINGS.delta.release.version
DIR_STAT = "directory|root|root|700|4096\n"


def _conn(responses: dict | None = None, **kwargs) -> FakeConnection:
    """A host named NODE where every "does this command succeed?" read says no."""
    conn = FakeConnection({"hostname": (0, f"{NODE}\n", ""), **(responses or {})}, **kwargs)
    conn.respond(
        re.compile(r"if \( .* \) >/dev/null 2>&1 </dev/null; then echo yes; else echo no; fi"),
        (0, "no\n", ""),
    )
    return conn


def _with(**echo2) -> Settings:
    return SETTINGS.model_copy(update={"echo2": Echo2Settings(**echo2)})


def _k8s_valid(document: dict) -> None:
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


# -- settings --------------------------------------------------------------------------


def test_delete_reclaim_policy_is_refused_naming_the_field() -> None:
    with pytest.raises(
        ValidationError, match=r"echo2\.reclaim_policy = \"Delete\" cannot work.*no-provisioner"
    ):
        Echo2Settings(reclaim_policy="Delete")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("volumes", [{"name": "a"}, {"name": "a"}], r"echo2\.volumes: the name a is used twice"),
        ("volumes", [{"name": "Bad_Name"}], r"volumes\.0\.name"),
        ("volumes", [{"name": "a", "size": "1G"}], r"volumes\.0\.size"),
        ("volumes", [{"name": "a", "access_modes": ["ReadWriteOnce"] * 2}], r"name a mode twice"),
        ("devices", ["sdb"], r"echo2\.devices: 'sdb' are not /dev/ paths"),
        ("volume_mode", "777", r"volume_mode"),
        ("layout", "zfs", r"layout"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Echo2Settings(**{field: value})


def test_lvm_without_devices_is_refused() -> None:
    with pytest.raises(ValidationError, match=r'echo2\.layout = "lvm" needs echo2\.devices'):
        Echo2Settings(layout="lvm")


def test_auto_layout_follows_the_devmapper_waiver() -> None:
    assert ECHO2.resolved_layout(SETTINGS.effective_profile("scratch")) == "directories"
    assert ECHO2.resolved_layout(SETTINGS.effective_profile("production")) == "lvm"


# -- rendered documents ----------------------------------------------------------------


def test_the_default_storage_class_binds_on_first_use_without_a_provisioner() -> None:
    document = storage.storage_class(ECHO2)
    _k8s_valid(document)
    assert document["metadata"]["annotations"] == {"storageclass.kubernetes.io/is-default-class": "true"}
    assert (document["provisioner"], document["volumeBindingMode"], document["reclaimPolicy"]) == (
        "kubernetes.io/no-provisioner",
        "WaitForFirstConsumer",
        "Retain",
    )


def test_each_volume_is_a_local_pv_pinned_to_the_node() -> None:
    settings = _with(volumes=[StorageVolume(name="big", size="5Gi", access_modes=["ReadWriteOncePod"])])
    (pv,) = storage.storage_documents(settings.echo2, NODE)[1:]
    _k8s_valid(pv)
    spec = pv["spec"]
    assert spec["local"] == {"path": "/srv/hvsuite-volumes/big"}
    assert (spec["capacity"], spec["accessModes"]) == ({"storage": "5Gi"}, ["ReadWriteOncePod"])
    assert (spec["storageClassName"], spec["persistentVolumeReclaimPolicy"]) == ("hvsuite-local", "Retain")
    term = spec["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert term == {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}
    # The API server's default is written out (kubectl diff stays empty); claimRef is the
    # controller's and never in the manifest (apply never fights the binding).
    assert spec["volumeMode"] == "Filesystem" and "claimRef" not in spec


def test_claims_and_the_csi_class_are_valid_kubernetes_documents() -> None:
    _k8s_valid(storage.claim("data", "ns", "hvsuite-local", "64Mi"))
    _k8s_valid(storage.csi_storage_class(ECHO2))
    restored = storage.snapshot_round(ECHO2, "ns", "data", "64Mi").restored
    _k8s_valid(restored)
    assert restored["spec"]["dataSource"] == {
        "apiGroup": "snapshot.storage.k8s.io",
        "kind": "VolumeSnapshot",
        "name": "data-snap",
    }


def test_an_unknown_field_fails_kubernetes_validation() -> None:
    broken = storage.persistent_volume(ECHO2, ECHO2.volumes[0], NODE)
    broken["spec"]["reclaimPolicy"] = "Retain"  # the PV's field is persistentVolumeReclaimPolicy
    with pytest.raises(kubernetes_validate.ValidationError):
        _k8s_valid(broken)


# -- snapshot schema -------------------------------------------------------------------


def test_rendered_snapshot_documents_are_valid() -> None:
    taken = storage.snapshot_round(ECHO2, "ns", "data", "64Mi")
    assert storage.snapshot_errors(storage.snapshot_class(ECHO2)) == []
    assert storage.snapshot_errors(taken.snapshot) == []
    assert taken.snapshot["spec"] == {
        "volumeSnapshotClassName": "hvsuite-snapshots",
        "source": {"persistentVolumeClaimName": "data"},
    }


def _broken(document: dict, edit) -> dict:
    document = copy.deepcopy(document)
    edit(document)
    return document


SNAPSHOT = storage.volume_snapshot(ECHO2, "snap", "ns", "data")
CLASS = storage.snapshot_class(ECHO2)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (_broken(CLASS, lambda d: d.pop("driver")), r"'driver' is a required property"),
        (_broken(CLASS, lambda d: d.update(deletionPolicy="Keep")), r"deletionPolicy: 'Keep' is not one of"),
        (
            _broken(SNAPSHOT, lambda d: d["spec"]["source"].update(volumeSnapshotContentName="c")),
            r"spec\.source: .* has too many properties",
        ),
        (_broken(SNAPSHOT, lambda d: d["spec"].update(source={})), r"spec\.source: .* should be non-empty"),
        (
            _broken(SNAPSHOT, lambda d: d["spec"].update(volumeSnapshotClassName=3)),
            r"3 is not of type 'string'",
        ),
        (_broken(SNAPSHOT, lambda d: d["metadata"].pop("namespace")), r"'namespace' is a required property"),
        (_broken(SNAPSHOT, lambda d: d.update(apiVersion="snapshot.storage.k8s.io/v1beta1")), r"apiVersion"),
        (_broken(SNAPSHOT, lambda d: d["spec"].update(sources={})), r"Additional properties"),
        ({"kind": "VolumeSnapshotContent"}, r"not a snapshot\.storage\.k8s\.io/v1 kind"),
    ],
)
def test_invalid_snapshot_documents_are_refused(document: dict, message: str) -> None:
    errors = storage.snapshot_errors(document)
    assert any(re.search(message, error) for error in errors), errors


# -- the step on a host ----------------------------------------------------------------


def test_directories_layout_and_manifest_applied_when_the_cluster_differs() -> None:
    conn = _conn({"hostname": (0, "E2dev-Host1\n", "")})
    host = fake_host(conn)
    applied = storage.apply(fake_context(host, profile="scratch"))
    assert applied.changed
    assert "mkdir -p -- /srv/hvsuite-volumes/hvsuite-pv-2" in conn.commands
    assert "chmod 0700 -- /srv/hvsuite-volumes" in conn.commands
    path = f"{MANIFEST_DIR}/echo2-storage.yaml"
    documents = list(yaml.safe_load_all(conn.files[path]))
    assert documents == storage.storage_documents(ECHO2, "e2dev-host1")
    assert f"{KUBECTL} apply -f {path}" in conn.commands
    # Scratch waives csi-snapshots: nothing of the snapshot machinery is touched.
    assert not any("snapshot" in command for command in conn.commands)


def test_a_second_run_changes_nothing() -> None:
    path = f"{MANIFEST_DIR}/echo2-storage.yaml"
    manifest = yaml.safe_dump_all(storage.storage_documents(ECHO2, NODE), sort_keys=False).encode()
    conn = _conn(
        {
            FileInfo(path).command: (0, f"regular file|root|root|600|{len(manifest)}\n", ""),
            CommandSucceeds(f"{KUBECTL} diff -f {path} >/dev/null").command: (0, "yes\n", ""),
        },
        files={path: manifest},
    )
    for directory in (MANIFEST_DIR, ECHO2.root, *(ECHO2.volume_dir(v) for v in ECHO2.volumes)):
        conn.set_fact(FileInfo(directory), DIR_STAT)
    applied = storage.apply(fake_context(fake_host(conn), profile="scratch"))
    assert not applied.changed, [op.op for op in applied.ops if op.changed]


def test_check_mode_records_would_changes_and_runs_nothing() -> None:
    conn = _conn()
    host = fake_host(conn, mode="check")
    applied = storage.apply(fake_context(host, profile="scratch"))
    assert applied.changed and host.changes
    assert conn.uploads == []
    assert not any(c.startswith(("mkdir", "chmod", "chown", f"{KUBECTL} apply")) for c in conn.commands)


def test_lvm_creates_the_group_the_volumes_and_their_mounts() -> None:
    settings = _with(layout="lvm", devices=["/dev/vdb"], volumes=[StorageVolume(name="v0", size="2Gi")])
    conn = _conn(
        {
            storage.LvmDevices().command: (0, "  /dev/vda2|sysvg\n", ""),
            DebPackages().command: (0, "lvm2\t2.03\tii\n", ""),
        }
    )
    storage.layout(fake_context(fake_host(conn), settings, profile="production"))
    assert "vgcreate --yes hvsuite-volumes /dev/vdb" in conn.commands
    assert "lvcreate --yes -n v0 -L 2048m hvsuite-volumes" in conn.commands
    assert (
        "blkid /dev/hvsuite-volumes/v0 >/dev/null || mkfs.ext4 -q -L v0 /dev/hvsuite-volumes/v0"
        in conn.commands
    )
    assert "mount /srv/hvsuite-volumes/v0" in conn.commands
    assert (
        conn.files["/etc/fstab"]
        == b"/dev/hvsuite-volumes/v0 /srv/hvsuite-volumes/v0 ext4 defaults,nofail 0 2\n"
    )


def test_lvm_refuses_a_device_of_another_volume_group() -> None:
    settings = _with(layout="lvm", devices=["/dev/vdb"])
    conn = _conn(
        {
            storage.LvmDevices().command: (0, "  /dev/vdb|data\n", ""),
            DebPackages().command: (0, "lvm2\t2.03\tii\n", ""),
        }
    )
    with pytest.raises(
        Exception, match=r"echo2\.devices: /dev/vdb \(in data\) belong to another volume group"
    ):
        storage.layout(fake_context(fake_host(conn), settings, profile="production"))
    assert not any(c.startswith(("vgcreate", "vgextend", "lvcreate")) for c in conn.commands)


def test_production_without_snapshot_pins_names_the_missing_artifacts() -> None:
    conn = _conn()
    settings = _with(layout="directories")
    with pytest.raises(
        Exception, match=r"no pin for snapshot-crd-volumesnapshotclasses.*echo2\.snapshot_crds"
    ):
        storage.apply(fake_context(fake_host(conn), settings, profile="production"))
    assert conn.commands == []


def test_wiping_is_limited_to_the_volume_directories() -> None:
    assert storage.wipe_command(ECHO2, "/srv/hvsuite-volumes/hvsuite-pv-0").startswith(
        "find /srv/hvsuite-volumes/hvsuite-pv-0 -mindepth 1 -maxdepth 1 ! -name lost+found"
    )
    with pytest.raises(ValueError, match="not a volume directory"):
        storage.wipe_command(ECHO2, "/srv/hvsuite-volumes")
