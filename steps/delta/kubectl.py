"""kubectl on a control-plane host, as every Kubernetes team's steps use it.

Every call runs on the host with the admin kubeconfig, which never leaves it except as the
operator's copy (``control_plane.fetch_kubeconfig``). Objects a team manages are kept as a
manifest file on the host and applied only when the cluster differs from it
(``kubectl diff``), so a second run changes nothing and drift is put back.
"""

from __future__ import annotations

import shlex

import yaml

from apply import ops
from apply.api import Context
from apply.runner import ApplyError, Host, OpResult

ADMIN_CONF = "/etc/kubernetes/admin.conf"
# The cluster's CA certificate, as kubeadm writes it.
CA_CERT = "/etc/kubernetes/pki/ca.crt"
KUBECTL = f"kubectl --kubeconfig {ADMIN_CONF}"
# The manifests of the objects the suite manages, one file per concern.
MANIFEST_DIR = "/etc/kubernetes/hvsuite"
# The label of every object the suite manages.
MANAGED_BY = {"app.kubernetes.io/managed-by": "hvsuite"}


def kubectl(*args: str) -> str:
    """The shell command running kubectl with ``args`` (quoted) as the cluster's admin."""
    return " ".join([KUBECTL, *(shlex.quote(arg) for arg in args)])


def wait(host: Host, what: str, shell: str, timeout: float) -> None:
    """Until ``shell`` succeeds on the host, bounded by ``timeout``."""
    script = f"until {shell}; do sleep 2; done"
    result = host.run(f"timeout {int(timeout)} sh -c {shlex.quote(script)}", timeout=timeout + 30)
    if not result.ok:
        raise ApplyError(f"[{host.name}] {what}: not within {timeout:.0f} s", result)


def wait_rollout(host: Host, namespace: str, workload: str, timeout: float) -> None:
    """Until ``workload`` (``daemonset/NAME``, ``deployment/NAME``) has rolled out, bounded."""
    status = kubectl("-n", namespace, "rollout", "status", workload, "--timeout=10s")
    wait(host, f"{workload} in {namespace} rolled out", status, timeout)


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


def pinned_documents(ctx: Context, artifact: str) -> list[dict]:
    """The objects of an upstream manifest pinned in ``[artifacts]`` (sha256 checked on the
    controller before anything reaches the host)."""
    path = ctx.require_artifacts().fetch(artifact)
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def account_token(
    host: Host,
    account: str,
    rules: list[dict],
    token_file: str,
    *,
    namespace: str = "kube-system",
    group: str = "root",
) -> OpResult:
    """A ServiceAccount allowed exactly ``rules`` (a ClusterRole), and its token in
    ``token_file`` (mode 0640, ``group``). The token goes from the API to the file on the host
    only: it is never printed."""
    secret = f"{account}-token"
    apply_manifest(
        host,
        f"account-{account}",
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": account, "namespace": namespace},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/service-account-token",
                "metadata": {
                    "name": secret,
                    "namespace": namespace,
                    "annotations": {"kubernetes.io/service-account.name": account},
                },
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": account},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": account},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": account},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            },
        ],
    )
    token = kubectl("-n", namespace, "get", "secret", secret, "-o", "jsonpath={.data.token}")
    if host.mode == "apply":
        wait(host, f"the token of ServiceAccount {account}", f'[ -n "$({token})" ]', 120)
    return ops.command(
        host,
        f"umask 027 && {token} | base64 -d > {token_file}.new"
        f" && chgrp {group} {token_file}.new && mv {token_file}.new {token_file}",
        unless=f"{token} | base64 -d | cmp -s - {token_file}",
        name=f"token of {account} -> {token_file}",
    )
