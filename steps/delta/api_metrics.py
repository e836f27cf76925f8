"""Team Delta: Prometheus (Team Charlie's) scrapes the Kubernetes API server.

A ServiceAccount allowed to read ``/metrics``, its token, the cluster CA and the API server's
``host:port`` are written for Prometheus on the host; the scrape job that reads them is
Delta's contribution to Charlie's config (`steps.charlie.hookspecs`), present once they exist.
"""

from __future__ import annotations

from typing import Any

from apply import ops
from apply.api import Context
from apply.facts import FileInfo, ServiceState
from apply.runner import ApplyError
from steps.charlie import prometheus
from steps.delta import kubernetes
from steps.delta.kubectl import CA_CERT, account_token

ACCOUNT = "hvsuite-prometheus"
# What Prometheus reads: a ServiceAccount token, the cluster CA and the server's host:port.
CREDENTIALS_DIR = "/etc/prometheus/kubernetes"
TOKEN = f"{CREDENTIALS_DIR}/token"
CA = f"{CREDENTIALS_DIR}/ca.crt"
SERVER = f"{CREDENTIALS_DIR}/server"
JOB = "kubernetes-apiserver"


def scrape_job(server: str) -> dict[str, Any]:
    """The API server's scrape job, with the read-only ServiceAccount's token."""
    return {
        "job_name": JOB,
        "scheme": "https",
        "authorization": {"credentials_file": TOKEN},
        "tls_config": {"ca_file": CA},
        "static_configs": [{"targets": [server]}],
    }


def contributed_jobs(ctx: Context) -> list[dict[str, Any]]:
    """The job, once its credentials exist on the host (see `steps.delta.hooks`)."""
    server = ctx.host.read(SERVER)
    if not server or ctx.host.fact(FileInfo(TOKEN)) is None:
        return []
    return [scrape_job(server.decode().strip())]


def apply(ctx: Context) -> None:
    """The account, its token, the CA and the server's address for Prometheus, then Charlie's
    config re-rendered with the job (nothing where Prometheus is not installed)."""
    host = ctx.host
    if not host.fact(ServiceState(prometheus.PROMETHEUS)).exists:
        return
    ops.directory(host, CREDENTIALS_DIR, group="prometheus", mode="0750")
    account_token(
        host, ACCOUNT, [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}], TOKEN, group="prometheus"
    )
    ca = host.read(CA_CERT)
    if ca is None:
        raise ApplyError(f"[{host.name}] {CA_CERT} is missing after kubeadm init")
    ops.file(host, CA, ca, group="prometheus", mode="0640")
    api = f"{ctx.address}:{ctx.settings.port('Delta', kubernetes.API_PORT_NAME)}"
    ops.file(host, SERVER, api + "\n", group="prometheus", mode="0640")
    prometheus.reconfigure(ctx)
