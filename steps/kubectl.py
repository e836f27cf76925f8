"""kubectl on a control-plane host, as every Kubernetes team's steps use it.

Every call runs on the host with the admin kubeconfig, which never leaves it except as the
operator's copy (``control_plane.fetch_kubeconfig``). Objects a team manages are kept as a
manifest file on the host and applied only when the cluster differs from it
(``kubectl diff``), so a second run changes nothing and drift is put back.
"""

from __future__ import annotations

import shlex

import yaml

from steps import ops
from steps.runner import ApplyError, Host, OpResult

ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBECTL = f"kubectl --kubeconfig {ADMIN_CONF}"
# The manifests of the objects the suite manages, one file per concern.
MANIFEST_DIR = "/etc/kubernetes/hvsuite"


def kubectl(*args: str) -> str:
    """The shell command running kubectl with ``args`` (quoted) as the cluster's admin."""
    return " ".join([KUBECTL, *(shlex.quote(arg) for arg in args)])


def wait(host: Host, what: str, shell: str, timeout: float) -> None:
    """Until ``shell`` succeeds on the host, bounded by ``timeout``."""
    script = f"until {shell}; do sleep 2; done"
    result = host.run(f"timeout {int(timeout)} sh -c {shlex.quote(script)}", timeout=timeout + 30)
    if not result.ok:
        raise ApplyError(f"[{host.name}] {what}: not within {timeout:.0f} s", result)


def apply_manifest(host: Host, name: str, documents: list[dict]) -> OpResult:
    """``documents`` kept in ``MANIFEST_DIR/<name>.yaml`` and applied when the cluster differs."""
    path = f"{MANIFEST_DIR}/{name}.yaml"
    ops.directory(host, MANIFEST_DIR, mode="0700")
    ops.file(host, path, yaml.safe_dump_all(documents, sort_keys=False), mode="0600")
    return ops.command(
        host,
        f"{KUBECTL} apply -f {path}",
        unless=f"{KUBECTL} diff -f {path} >/dev/null",
        name=f"kubectl apply {name}",
    )


def delete_manifest(host: Host, name: str) -> OpResult:
    """The objects of a manifest the suite no longer wants, and the file itself."""
    path = f"{MANIFEST_DIR}/{name}.yaml"
    return ops.command(
        host,
        f"{KUBECTL} delete --ignore-not-found -f {path} && rm -f {path}",
        unless=f"! test -e {path}",
        name=f"kubectl delete {name}",
    )
