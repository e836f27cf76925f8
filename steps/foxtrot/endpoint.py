"""Team Foxtrot: the cluster moved onto its control-plane endpoint (the virtual IP).

A cluster starts on its first node's own address (Team Delta's ``kubeadm init``). kubeadm
joins further control planes only to a cluster whose configuration names a
``controlPlaneEndpoint``, and upstream offers no command to add one afterwards. This step
does what the endpoint touches, each part only where it differs:

- the API server's certificate names the endpoint's host (Delta puts it there from the first
  init; a cluster built before gets its certificate reissued by kubeadm, and the API server
  restarted);
- the cluster's kubeadm configuration (Delta's config file on the host, and the
  ``kubeadm-config`` ConfigMap that joins read);
- ``cluster-info`` in ``kube-public`` (where a joining node learns the API's address), and
  kube-proxy's kubeconfig (rolled out);
- the operator's and the kubelet's kubeconfigs (``admin.conf``, ``kubelet.conf``). The
  controller manager and the scheduler keep talking to the API server beside them.
"""

from __future__ import annotations

import shlex
from dataclasses import replace

import yaml

from apply import ops
from apply.api import Context, step
from apply.runner import Host
from steps.delta import control_plane, kubeadm_config, kubernetes
from steps.delta.kubectl import ADMIN_CONF, kubectl, wait, wait_rollout

APISERVER_CERT = "/etc/kubernetes/pki/apiserver.crt"
APISERVER_KEY = "/etc/kubernetes/pki/apiserver.key"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
MANIFESTS = "/etc/kubernetes/manifests"
# The kubeconfigs through which clients away from the API server reach it.
CLIENT_KUBECONFIGS = (ADMIN_CONF, KUBELET_CONF)
API_READY = f"{kubectl('get', '--raw=/readyz')} >/dev/null 2>&1"


def endpoint_url(endpoint: str) -> str:
    return f"https://{endpoint}"


def server_of(kubeconfig_text: str) -> str | None:
    """The first cluster's ``server`` in a kubeconfig."""
    config = yaml.safe_load(kubeconfig_text) or {}
    clusters = config.get("clusters") or [{}]
    return (clusters[0].get("cluster") or {}).get("server")


def with_server(kubeconfig_text: str, server: str) -> str:
    """The kubeconfig with every cluster's ``server`` set to ``server``."""
    config = yaml.safe_load(kubeconfig_text)
    for cluster in config.get("clusters") or []:
        cluster["cluster"]["server"] = server
    return yaml.safe_dump(config, default_flow_style=False, sort_keys=False)


def restart_static_pod(component: str) -> str:
    """The command that makes kubelet restart a control-plane component's container (its
    task killed by its Kubernetes container name; the pod's restart policy brings it back)."""
    label = f'labels."io.kubernetes.container.name"=={component}'
    return (
        f"for id in $(ctr -n k8s.io containers ls -q {shlex.quote(label)}); do "
        "ctr -n k8s.io tasks kill -s TERM $id 2>/dev/null || true; done"
    )


@step("Control-plane endpoint")
def apply(ctx: Context) -> None:
    host, settings = ctx.host, ctx.settings
    endpoint = settings.foxtrot.endpoint(settings.port("Foxtrot", settings.foxtrot.api_port))
    url = endpoint_url(endpoint)
    spec = replace(kubernetes.cluster_spec(ctx), control_plane_endpoint=endpoint)
    _certificate(host, spec)
    config = ops.file(host, control_plane.CONFIG, kubeadm_config.render(spec), mode="0600")
    current = host.run(
        kubectl(
            "-n",
            "kube-system",
            "get",
            "configmap",
            "kubeadm-config",
            "-o",
            "jsonpath={.data.ClusterConfiguration}",
        )
    ).stdout
    uploaded = (yaml.safe_load(current) or {}).get("controlPlaneEndpoint")
    host.execute(
        f"kubeadm-config: controlPlaneEndpoint {endpoint}",
        []
        if uploaded == endpoint and not config.changed
        else [f"kubeadm init phase upload-config kubeadm --config {control_plane.CONFIG}"],
    )
    _cluster_info(host, url)
    _kube_proxy(host, url, settings.delta.ready_timeout)
    changed = [_kubeconfig(host, path, url) for path in CLIENT_KUBECONFIGS]
    if changed[CLIENT_KUBECONFIGS.index(KUBELET_CONF)]:
        ops.service(host, "kubelet", restart=True)
    if host.mode == "apply":
        wait(host, f"the API through {endpoint}", API_READY, settings.delta.ready_timeout)


def _certificate(host: Host, spec: kubeadm_config.ClusterSpec) -> None:
    """The API server's certificate reissued by kubeadm if it lacks a name the spec asks for."""
    names = host.run(f"openssl x509 -in {APISERVER_CERT} -noout -ext subjectAltName").stdout
    missing = [name for name in spec.cert_sans if name not in names]
    if not missing:
        host.unchanged(f"certificate {APISERVER_CERT}", "names " + ", ".join(spec.cert_sans))
        return
    config = "/etc/kubernetes/hvsuite-foxtrot-apiserver-cert.yaml"
    ops.file(host, config, kubeadm_config.render(spec), mode="0600")
    host.execute(
        f"certificate {APISERVER_CERT}: add {', '.join(missing)}",
        [
            # kubeadm keeps an existing certificate: it issues a new one where none is.
            f"mv {APISERVER_CERT} {APISERVER_CERT}.hvsuite-old",
            f"mv {APISERVER_KEY} {APISERVER_KEY}.hvsuite-old",
            f"kubeadm init phase certs apiserver --config {config}",
            restart_static_pod("kube-apiserver"),
        ],
    )
    if host.mode == "apply":
        wait(host, "the API server with its new certificate", API_READY, spec.control_plane_timeout or 240)


def _configmap_server(host: Host, namespace: str, name: str, key: str, url: str) -> bool:
    """The kubeconfig a ConfigMap holds under ``key`` pointed at ``url``; whether it changed."""
    jsonpath = "jsonpath={.data." + key.replace(".", "\\.") + "}"
    current = host.run(kubectl("-n", namespace, "get", "configmap", name, "-o", jsonpath)).stdout
    commands = []
    if server_of(current) != url:
        patch = yaml.safe_dump({"data": {key: with_server(current, url)}})
        commands.append(kubectl("-n", namespace, "patch", "configmap", name, "--type=merge", "-p", patch))
    return host.execute(f"{namespace}/{name}: server {url}", commands).changed


def _cluster_info(host: Host, url: str) -> None:
    # Where a joining node learns the API's address.
    _configmap_server(host, "kube-public", "cluster-info", "kubeconfig", url)


def _kube_proxy(host: Host, url: str, timeout: float) -> None:
    if _configmap_server(host, "kube-system", "kube-proxy", "kubeconfig.conf", url):
        # kube-proxy reads its kubeconfig at start only.
        host.execute(
            "kube-proxy restarted",
            [kubectl("-n", "kube-system", "rollout", "restart", "daemonset/kube-proxy")],
        )
        if host.mode == "apply":
            wait_rollout(host, "kube-system", "daemonset/kube-proxy", timeout)


def _kubeconfig(host: Host, path: str, url: str) -> bool:
    current = (host.read(path) or b"").decode()
    if not current:
        host.unchanged(f"kubeconfig {path}", "absent")
        return False
    return ops.file(
        host,
        path,
        with_server(current, url) if server_of(current) != url else current,
        mode="0600",
        sensitive=True,
    ).changed
