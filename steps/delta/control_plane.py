"""Team Delta: a kubeadm control plane on the primary host, untainted so pods schedule on it.

``kubeadm init`` runs from a rendered config (`steps.delta.kubeadm_config`) only when the
host has no cluster yet; a healthy cluster is never re-initialised. A changed config on an
existing cluster is applied with kubeadm's own phases (static pod manifests, kubelet's
config, the uploaded config, kube-proxy's ConfigMap), the way kubeadm applies configuration
changes. Afterwards: the node's taint is kept off (drift is put back), a bootstrap pod
network exists until a later team's replaces it (`steps.delta.pod_network`), and Prometheus
(Team Charlie's) gets a read-only token to scrape the API server (`steps.delta.api_metrics`).
Every kubectl call runs on the host with the admin kubeconfig, which never leaves it except
as the operator's copy (:func:`fetch_kubeconfig`).
"""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from pathlib import Path

import yaml

from apply import ops
from apply.api import Context, step
from apply.facts import FileInfo
from apply.runner import ApplyError, Host
from steps.delta import api_metrics, kubeadm_config, kubernetes, pod_network
from steps.delta.kubectl import ADMIN_CONF, KUBECTL, kubectl, wait, wait_rollout

CONFIG = "/etc/kubernetes/hvsuite-kubeadm.yaml"
# kubeadm's control-plane taints: "master" up to 1.24, "control-plane" from 1.24 on.
CONTROL_PLANE_TAINTS = ("node-role.kubernetes.io/master", "node-role.kubernetes.io/control-plane")


@step("Kubernetes control plane (kubeadm)")
def apply(ctx: Context) -> None:
    host, delta = ctx.host, ctx.settings.delta
    spec = replace(kubernetes.cluster_spec(ctx), control_plane_endpoint=applied_endpoint(host))
    config = ops.file(host, CONFIG, kubeadm_config.render(spec), mode="0600")
    skipped = ",".join(phase.phase for phase in kubeadm_config.skip_phases(spec))
    initialized = host.fact(FileInfo(ADMIN_CONF)) is not None
    if not initialized:
        if host.mode == "apply" and kubeadm_config.kubeadm_api_version(spec.version).endswith("/v1beta4"):
            # kubeadm's own validator, where its version has one (1.26 on).
            checked = host.run(f"kubeadm config validate --config {CONFIG}")
            if not checked.ok:
                raise ApplyError(f"[{host.name}] kubeadm rejects {CONFIG}", checked)
        ops.command(
            host,
            f"kubeadm init --config {CONFIG}" + (f" --skip-phases={skipped}" if skipped else ""),
            creates=ADMIN_CONF,
            name="kubeadm init",
        )
    elif config.changed:
        changed = host.execute(
            "kubeadm: control plane from the changed config",
            [
                f"kubeadm init phase control-plane all --config {CONFIG}",
                f"kubeadm init phase kubelet-start --config {CONFIG}",
                f"kubeadm init phase upload-config all --config {CONFIG}",
                f"kubeadm init phase addon kube-proxy --config {CONFIG}",
                # kube-proxy reads its ConfigMap at start only.
                kubectl("-n", "kube-system", "rollout", "restart", "daemonset/kube-proxy"),
            ],
        )
        if changed.changed and host.mode == "apply":
            # kube-proxy restarted with the new config.
            wait_rollout(host, "kube-system", "daemonset/kube-proxy", delta.ready_timeout)
    ops.service(host, "kubelet", enabled=True, running=True)
    if host.mode == "verify" or host.fact(FileInfo(ADMIN_CONF)) is None:
        # Nothing to compare before kubeadm has run (check mode on a new host).
        return
    wait(
        host, "the API server's /readyz", f"{KUBECTL} get --raw=/readyz >/dev/null 2>&1", delta.ready_timeout
    )
    node = spec.node_name
    _untaint(host, node)
    pod_network.bootstrap(ctx, node)
    api_metrics.apply(ctx)


def applied_endpoint(host: Host) -> str | None:
    """The control-plane endpoint the cluster was moved to, as the applied config records it.

    A new cluster starts on the node's own address: ``kubeadm init`` waits for the API server
    through the endpoint, and a virtual IP is brought up by a later team (Foxtrot), which
    moves the cluster onto it and records it here. Delta keeps what is recorded."""
    text = host.read(CONFIG)
    if text is None:
        return None
    for document in yaml.safe_load_all(text):
        if isinstance(document, dict) and document.get("kind") == "ClusterConfiguration":
            return document.get("controlPlaneEndpoint")
    return None


def _untaint(host: Host, node: str) -> None:
    taints = host.run(
        kubectl("get", "node", node, "-o", "jsonpath={range .spec.taints[*]}{.key}{'\\n'}{end}")
    )
    present = [key for key in taints.stdout.split() if key in CONTROL_PLANE_TAINTS]
    host.execute(
        f"node {node} untainted (pods schedule on the control plane)",
        [kubectl("taint", "nodes", node, f"{key}-") for key in present],
    )


def fetch_kubeconfig(ctx: Context) -> Path:
    """The admin kubeconfig copied to the controller (mode 0600) for the operator's kubectl
    and the suite's checks. Its credentials are added to the host's redactor first, so no
    log or report can show them."""
    host = ctx.host
    data = host.read(ADMIN_CONF)
    if data is None:
        raise ApplyError(f"[{host.name}] {ADMIN_CONF} does not exist: the control plane is not initialised")
    config = yaml.safe_load(data)
    for user in config.get("users", []):
        for key, value in (user.get("user") or {}).items():
            if key.endswith("-data") or key in ("token", "password"):
                host.redactor.add(value)
                if key.endswith("-data"):
                    host.redactor.add(base64.b64decode(value).decode(errors="replace"))
    path = Path(ctx.settings.delta.kubeconfig.format(host=host.name)).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists() or path.read_bytes() != data:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    path.chmod(0o600)
    return path
