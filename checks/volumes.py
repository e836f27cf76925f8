"""Outside-in checks of Team Echo-2's volumes through the Kubernetes API, from the controller.

:class:`VolumeChecks` works in one namespace per run with pods of the suite's own image
(busybox, pushed to the suite's registry for this run): claims are created from the same
rendered documents the step's tests validate (``steps.echo2.storage``), pods write and read a
nonce on them. When the run's checks are done the namespace goes, and every static PV that
one of its claims had bound is put back the way the step left it: its directory emptied
and its claimRef cleared, so it is Available again for the next run.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from apply.poll import eventually
from checks.kube import CheckNamespace, Cluster, exists, pod
from settings.model import Settings
from steps.echo2 import storage
from steps.echo2.settings import Echo2Settings

MOUNT = "/data"
SNAPSHOT_GROUP, SNAPSHOT_VERSION = storage.SNAPSHOT_API.split("/")


@dataclass
class VolumeChecks:
    cluster: Cluster
    echo2: Echo2Settings
    namespace: str
    image: str
    # Empties a volume's directory on its host (the only step outside the API).
    wipe: Callable[[str], None]

    @property
    def timeout(self) -> float:
        return self.echo2.bind_timeout

    @classmethod
    @contextlib.contextmanager
    def session(
        cls, cluster: Cluster, settings: Settings, *, registry_host: str, wipe: Callable[[str], None]
    ) -> Iterator[VolumeChecks]:
        with CheckNamespace.create(
            cluster,
            settings,
            registry_host=registry_host,
            nonce=secrets.token_hex(8),
            repository=settings.echo2.test_repository,
            timeout=settings.echo2.bind_timeout,
        ) as namespace:
            checks = cls(cluster, settings.echo2, namespace.name, namespace.image, wipe)
            try:
                yield checks
            finally:
                checks.close()

    def close(self) -> None:
        """The namespace deleted; then the static PVs its claims bound made Available again."""
        with contextlib.suppress(ApiException):
            self.cluster.core.delete_namespace(self.namespace, grace_period_seconds=0)
        eventually(lambda: not exists(self.cluster.core.read_namespace, self.namespace), timeout=self.timeout)
        for volume in self.claimed_volumes():
            self.recycle(volume)

    # -- claims and pods -------------------------------------------------------------

    def new_claim(self, name: str, *, storage_class: str | None = None, size: str = "64Mi") -> str:
        document = storage.claim(name, self.namespace, storage_class or self.echo2.storage_class, size)
        self.create_claim(document)
        return name

    def create_claim(self, document: dict[str, Any]) -> None:
        self.cluster.core.create_namespaced_persistent_volume_claim(self.namespace, document)

    def claim(self, name: str) -> client.V1PersistentVolumeClaim:
        return self.cluster.core.read_namespaced_persistent_volume_claim(name, self.namespace)

    def delete_claim(self, name: str) -> None:
        self.cluster.core.delete_namespaced_persistent_volume_claim(name, self.namespace)
        read = self.cluster.core.read_namespaced_persistent_volume_claim
        eventually(lambda: not exists(read, name, self.namespace), timeout=self.timeout)

    def _run(self, name: str, claim: str, script: str) -> str:
        spec = pod(name, self.image, {"app": "volume-check"}, ["/bin/busybox", "sh", "-c", script], "Never",
                   claims={claim: MOUNT})  # fmt: skip
        return self.cluster.run_pod(self.namespace, spec, self.timeout)

    def write(self, pod_name: str, claim: str, text: str) -> None:
        self._run(pod_name, claim, f"echo {text} > {MOUNT}/nonce && /bin/busybox sync")

    def read(self, pod_name: str, claim: str) -> str:
        return self._run(pod_name, claim, f"/bin/busybox cat {MOUNT}/nonce").strip()

    def delete_pod(self, name: str) -> None:
        self.cluster.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        read = self.cluster.core.read_namespaced_pod
        eventually(lambda: not exists(read, name, self.namespace), timeout=self.timeout)

    # -- persistent volumes ----------------------------------------------------------

    def volume(self, name: str) -> client.V1PersistentVolume:
        return self.cluster.core.read_persistent_volume(name)

    def wait_for_volume(self, name: str, phase: str) -> str:
        found = eventually(lambda: self.volume(name).status.phase, lambda p: p == phase, timeout=self.timeout)
        return found

    def claimed_volumes(self) -> list[str]:
        """The static PVs (on the suite's StorageClass) a claim of this namespace bound."""
        return [
            pv.metadata.name
            for pv in self.cluster.core.list_persistent_volume().items
            if pv.spec.storage_class_name == self.echo2.storage_class
            and pv.spec.claim_ref is not None
            and pv.spec.claim_ref.namespace == self.namespace
        ]

    def recycle(self, name: str) -> None:
        """A Released PV of this namespace's claim: its data wiped, its claimRef cleared."""
        pv = self.volume(name)
        if pv.spec.claim_ref is None or pv.spec.claim_ref.namespace != self.namespace:
            return
        self.wait_for_volume(name, "Released")
        self.wipe(pv.spec.local.path)
        self.cluster.core.patch_persistent_volume(name, {"spec": {"claimRef": None}})
        self.wait_for_volume(name, "Available")

    # -- snapshots -------------------------------------------------------------------

    def create_snapshot(self, document: dict[str, Any]) -> None:
        self.cluster.custom.create_namespaced_custom_object(
            SNAPSHOT_GROUP, SNAPSHOT_VERSION, self.namespace, "volumesnapshots", document
        )

    def snapshot_ready(self, name: str) -> bool:
        found = self.cluster.custom.get_namespaced_custom_object(
            SNAPSHOT_GROUP, SNAPSHOT_VERSION, self.namespace, "volumesnapshots", name
        )
        return bool((found.get("status") or {}).get("readyToUse"))
