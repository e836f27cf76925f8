"""Team Echo-2 (phase 4): storage.

Apply the host's volume layout (directories, or one ext4 LV per volume on LVM), a default
StorageClass without a provisioner that binds on first use, and one static local
PersistentVolume per configured volume; where snapshots are not waived, the snapshot CRDs,
controller and a CSI driver from pinned manifests. Then prove it from the controller through
the API: the layout and the PVs are as configured, a claim binds once a pod uses it and its
data outlives the pod, Retain keeps the data of a deleted claim, a snapshot restores the
data it was taken of.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from apply.api import Applied, Context
from apply.poll import eventually
from checks.kube import Cluster
from checks.volumes import VolumeChecks
from engine import apply_fixture, not_applicable
from settings.base import EffectiveProfile
from settings.model import Settings
from steps.delta.kubernetes import node_name
from steps.echo2 import storage

pytestmark = [pytest.mark.usefixtures("applied"), pytest.mark.smoke]


@apply_fixture
def applied(ctx: Context) -> Applied:
    return storage.apply(ctx)


@pytest.fixture(scope="module")
def volumes(cluster: Cluster, settings: Settings, target, host) -> Iterator[VolumeChecks]:
    def wipe(path: str) -> None:
        host.check_output(storage.wipe_command(settings.echo2, path))

    with VolumeChecks.session(cluster, settings, registry_host=target.address, wipe=wipe) as checks:
        yield checks


@pytest.mark.task("Persistent volumes")
def test_the_host_layout_exists_as_configured(host, settings: Settings) -> None:
    echo2 = settings.echo2
    root = host.file(echo2.root)
    assert (root.is_directory, root.user, root.mode) == (True, "root", 0o700)
    for volume in echo2.volumes:
        found = host.file(echo2.volume_dir(volume))
        assert (found.is_directory, found.user, found.mode) == (True, "root", int(echo2.volume_mode, 8))


@pytest.mark.task("Persistent volumes")
def test_each_volume_is_a_local_pv_on_the_default_class(
    volumes: VolumeChecks, ctx: Context, notice: Callable[[str], None]
) -> None:
    echo2, node = volumes.echo2, node_name(ctx)
    for volume in echo2.volumes:
        pv = volumes.volume(volume.name)
        if pv.status.phase == "Released":
            # A user's claim was deleted and Retain kept its data: theirs to reclaim, not ours.
            claim = pv.spec.claim_ref
            notice(
                f"{volume.name} is Released: it keeps the data of deleted claim "
                f"{claim.namespace}/{claim.name} ({pv.spec.persistent_volume_reclaim_policy}); left alone"
            )
        else:
            assert pv.status.phase in ("Available", "Bound"), (volume.name, pv.status.phase)
        assert (pv.spec.storage_class_name, pv.spec.persistent_volume_reclaim_policy, pv.spec.local.path) == (
            echo2.storage_class, echo2.reclaim_policy, echo2.volume_dir(volume))  # fmt: skip
        term = pv.spec.node_affinity.required.node_selector_terms[0].match_expressions[0]
        assert (pv.spec.capacity["storage"], term.values) == (volume.size, [node])


@pytest.mark.task("Storage classes")
def test_exactly_one_default_storage_class_binding_on_first_use(cluster: Cluster, settings: Settings) -> None:
    classes = cluster.storage.list_storage_class().items
    default = [c for c in classes if (c.metadata.annotations or {}).get(storage.DEFAULT_CLASS) == "true"]
    assert [c.metadata.name for c in default] == [settings.echo2.storage_class]
    assert (default[0].provisioner, default[0].volume_binding_mode, default[0].reclaim_policy) == (
        storage.NO_PROVISIONER, "WaitForFirstConsumer", settings.echo2.reclaim_policy)  # fmt: skip


@pytest.mark.task("Persistent volumes")
@pytest.mark.full
def test_a_claim_binds_on_first_use_and_its_data_outlives_the_pod(volumes: VolumeChecks) -> None:
    nonce = secrets.token_hex(8)
    volumes.new_claim("data")
    assert volumes.claim("data").status.phase == "Pending"
    volumes.write("writer", "data", nonce)
    assert volumes.claim("data").status.phase == "Bound"
    volumes.delete_pod("writer")
    assert volumes.read("reader", "data") == nonce


@pytest.mark.task("Storage classes")
@pytest.mark.full
def test_retain_keeps_the_data_of_a_deleted_claim(volumes: VolumeChecks, host) -> None:
    nonce = secrets.token_hex(8)
    volumes.new_claim("kept")
    volumes.write("kept-writer", "kept", nonce)
    pv = volumes.volume(volumes.claim("kept").spec.volume_name)
    volumes.delete_pod("kept-writer")
    volumes.delete_claim("kept")
    assert volumes.wait_for_volume(pv.metadata.name, "Released") == "Released"
    assert host.file(f"{pv.spec.local.path}/nonce").content_string.strip() == nonce
    volumes.recycle(pv.metadata.name)  # the next run starts from an Available PV
    assert volumes.volume(pv.metadata.name).status.phase == "Available"


@pytest.mark.task("Volume snapshots")
@pytest.mark.requires("csi-snapshots")
@pytest.mark.full
def test_a_snapshot_restores_the_data_it_was_taken_of(volumes: VolumeChecks) -> None:
    echo2, first, second = volumes.echo2, secrets.token_hex(8), secrets.token_hex(8)
    volumes.new_claim("snapped", storage_class=echo2.csi_storage_class)
    volumes.write("snap-writer", "snapped", first)
    taken = storage.snapshot_round(echo2, volumes.namespace, "snapped", "64Mi")
    volumes.create_snapshot(taken.snapshot)
    name = taken.snapshot["metadata"]["name"]
    assert eventually(lambda: volumes.snapshot_ready(name), timeout=volumes.timeout)
    volumes.write("snap-overwriter", "snapped", second)
    volumes.create_claim(taken.restored)
    assert volumes.read("snap-restored-reader", taken.restored["metadata"]["name"]) == first
    assert volumes.read("snap-source-reader", "snapped") == second


@pytest.mark.task("Persistent volumes")
@pytest.mark.requires("devmapper")
def test_each_volume_is_a_mounted_logical_volume(host, settings: Settings, profile: EffectiveProfile) -> None:
    echo2 = settings.echo2
    if echo2.resolved_layout(profile) != "lvm":
        not_applicable('echo2.layout is "directories": the volumes are directories, not logical volumes')
    for volume in echo2.volumes:
        directory = echo2.volume_dir(volume)
        assert host.run(f"lvs {storage.lv_device(echo2, volume)}").rc == 0
        source = host.check_output(f"findmnt -no SOURCE {directory}")
        real = host.check_output(f"readlink -f {storage.lv_device(echo2, volume)}")
        assert (
            host.check_output(f"readlink -f {source}"),
            host.check_output(f"findmnt -no FSTYPE {directory}"),
        ) == (real, "ext4")
