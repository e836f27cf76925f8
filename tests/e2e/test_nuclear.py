"""The plan's nuclear option, automated as an operator would run it (nightly only): a fleet is
built up to Golf-1, a cluster object is created and backed up, the primary server is
destroyed and created anew, the cluster's identity (its PKI, Alpha's certificates, the
backup client's credentials) and etcd's data are restored from the repository through the
restore host, and the plan runs again. The object must be back; the time from the
destruction to the object answering again (the recovery time) is reported.

Why the identity is restored before the plan runs again: a rebuilt cluster would get a new CA,
and the restored objects (service-account tokens, ``kube-root-ca.crt``) would no longer match
it. kubeadm's certificate phases and Alpha's TLS step keep valid files they find.

About 7 minutes of a whole scratch fleet on 2 cores: marked ``nightly`` and deselected by default
(pytest.ini); ``.ci/nightly`` runs it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import allure
import pytest

from settings.loader import load_settings
from steps.alpha.settings import AlphaSettings
from steps.delta import etcd
from steps.delta.kubectl import kubectl
from steps.golf1 import restic
from tests.e2e.fleet import NUCLEAR, ROOT, address, build, config, destroy

pytestmark = pytest.mark.nightly

SETTINGS = load_settings()
MARKER = "hvsuite-nuclear-drill"
# Below the restore host's restore target: what brings the cluster's identity back.
RESTORED = (
    etcd.PKI,
    AlphaSettings().tls.cert_dir,
    SETTINGS.golf1.config_dir,
    restic.snapshot_path(SETTINGS, restic.ETCD_SNAPSHOT),
)
WORK = "/var/tmp/hvsuite-nuclear"


def sh(server: str, command: str, *, stdin: bytes | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        ["podman", "exec", "-i", server, "sh", "-c", command],
        input=stdin, capture_output=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{server}: {command}: {result.stderr.decode()[-2000:]}"
    return result.stdout.decode()


@pytest.fixture(scope="module")
def fleet() -> Iterator[str]:
    name = f"hvs-nuke-{uuid.uuid4().hex[:8]}"
    yield name
    # HVSUITE_E2E_KEEP=1 keeps the servers for a look at what went wrong.
    if os.environ.get("HVSUITE_E2E_KEEP") != "1":
        destroy(name)


def test_a_destroyed_primary_is_rebuilt_and_its_cluster_restored(
    fleet: str, tmp_path_factory: pytest.TempPathFactory, record_property
) -> None:
    primary, restore = f"{fleet}-host1", f"{fleet}-restore"
    teams = build(fleet, tmp_path_factory.mktemp("before"), "--teams", "Golf-1", addresses=NUCLEAR)
    assert teams["Golf-1"]["outcome"] == "green"
    nonce = uuid.uuid4().hex
    sh(primary, kubectl("-n", "default", "create", "configmap", MARKER, f"--from-literal=nonce={nonce}"))
    # A backup taken now, as the timer would (the unit is a oneshot: this waits for it).
    sh(primary, "systemctl start hvsuite-backup.service")
    was = address(primary)

    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "targets", "destroy", primary], cwd=ROOT, check=True, timeout=300)
    reports = tmp_path_factory.mktemp("after")
    create = [sys.executable, "-m", "targets", "--config", str(config(reports, NUCLEAR)), "create", primary]
    subprocess.run([*create, "--role", "primary"], cwd=ROOT, check=True, timeout=900)
    assert address(primary) == was, (
        "the rebuilt primary got another address: its certificates name the old one"
    )

    # The identity, from the repository through the restore host, onto the new primary.
    includes = " ".join(f"--include {shlex.quote(path)}" for path in RESTORED)
    sh(restore, f"rm -rf {WORK} && {restic.WRAPPER} restore latest --target {WORK} {includes}")
    # The restored paths only, never "." (the restore target's own mode would land on "/"); and
    # directories that exist on the new host keep theirs.
    relative = [path.lstrip("/") for path in RESTORED]
    archive = subprocess.run(
        ["podman", "exec", restore, "tar", "-C", WORK, "-cf", "-", *relative], capture_output=True, check=True
    ).stdout
    sh(restore, f"rm -rf {WORK}")
    sh(primary, "tar -C / --no-overwrite-dir -xf -", stdin=archive)
    # etcd's data from the snapshot, as Delta's member on this host (etcd serves on the host's
    # address once control-plane hosts are declared); the package first, for its user.
    name = sh(primary, "hostname").strip().lower()
    peer = etcd.peer_url(was)
    sh(
        primary,
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client",
    )
    sh(primary, f"systemctl disable --now {etcd.SERVICE}")
    snapshot, data = restic.snapshot_path(SETTINGS, restic.ETCD_SNAPSHOT), etcd.DATA_DIR
    cluster = f"--name {name} --initial-cluster {name}={peer} --initial-advertise-peer-urls {peer}"
    sh(
        primary,
        f"rm -rf {data} && ETCDCTL_API=3 etcdctl snapshot restore {snapshot} {cluster} --data-dir {data}",
    )
    sh(primary, f"chown -R etcd:etcd {data}")
    restored = time.monotonic() - started

    teams = build(fleet, reports, "--teams", "Golf-1", addresses=NUCLEAR)
    assert teams["Golf-1"]["outcome"] == "green"
    found = sh(primary, kubectl("-n", "default", "get", "configmap", MARKER, "-o", "jsonpath={.data.nonce}"))
    recovery = time.monotonic() - started
    assert found == nonce
    figures = {"recovery_seconds": round(recovery, 1), "destroy_to_restored_seconds": round(restored, 1)}
    for key, value in figures.items():
        record_property(key, value)
    (ROOT / "reports").mkdir(exist_ok=True)
    text = json.dumps(figures, indent=2) + "\n"
    (ROOT / "reports" / "nuclear-drill.json").write_text(text)
    allure.attach(text, name="Nuclear drill: recovery time", attachment_type=allure.attachment_type.JSON)
    print(f"nuclear drill: {figures}")
