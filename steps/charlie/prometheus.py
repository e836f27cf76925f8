"""Team Charlie: Prometheus and node_exporter from the OS archive, on the declared ports.

Order matters on a host where flintlock already serves gRPC on 9090 (Prometheus' default):
the systemd drop-ins that move Prometheus to its declared port are written *before* the
package is installed, so the package's own first start already uses them. They also point it
at the suite's config file and make its existence a start condition, so Prometheus never runs
on the package's default config (which scrapes a second "node" target). The scrape config
is checked with ``promtool check config`` before it replaces the live one; a config change
reloads Prometheus, a flag change restarts it.

Outside-in verification helpers (controller -> target over HTTP) live here too, so they can
be reused outside pytest: readiness, scrape targets, an instant PromQL query.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from apply import ops
from apply.api import Context, step
from apply.facts import FileInfo
from apply.runner import OpResult
from steps.charlie.settings import CharlieSettings

TEMPLATES = Path(__file__).parent / "templates"

PROMETHEUS = "prometheus"
NODE_EXPORTER = "prometheus-node-exporter"
# Not the package's prometheus.yml: its default config scrapes a "node" job on localhost:9100,
# and a start with it leaves a second node series behind until it goes stale.
CONFIG_PATH = "/etc/prometheus/hvsuite.yml"
STORAGE_PATH = "/var/lib/prometheus/metrics2"
VALIDATE = "promtool check config {path}"
PORT_NAMES = ("prometheus", "node-exporter", "grafana")
# Team Delta's credentials for scraping the Kubernetes API server: a ServiceAccount token,
# the cluster CA and the server's host:port. Their presence on the host adds the job.
KUBERNETES_DIR = "/etc/prometheus/kubernetes"
KUBERNETES_TOKEN = f"{KUBERNETES_DIR}/token"
KUBERNETES_CA = f"{KUBERNETES_DIR}/ca.crt"
KUBERNETES_SERVER = f"{KUBERNETES_DIR}/server"


def dropin_path(unit: str) -> str:
    return f"/etc/systemd/system/{unit}.service.d/hvsuite.conf"


def render_config(
    charlie: CharlieSettings,
    *,
    prometheus_port: int,
    node_exporter_port: int,
    hostname: str,
    kubernetes_api: str | None = None,
) -> str:

    return ops.render(
        TEMPLATES / "prometheus.yml.j2",
        {
            "scrape_interval": charlie.scrape_interval,
            "evaluation_interval": charlie.evaluation_interval,
            "external_labels": charlie.external_labels,
            "prometheus_port": prometheus_port,
            "node_exporter_port": node_exporter_port,
            "hostname": hostname,
            "kubernetes_api": kubernetes_api,
            "kubernetes_token": KUBERNETES_TOKEN,
            "kubernetes_ca": KUBERNETES_CA,
        },
    )


def scrape_config(ctx: Context) -> OpResult:
    """The scrape config from the settings and the host's facts (its hostname; the API
    server's credentials once Team Delta has written them), checked by promtool."""
    host, settings = ctx.host, ctx.settings
    hostname = host.run("hostname").stdout.strip()
    server = host.read(KUBERNETES_SERVER)
    kubernetes_api = None
    if server and host.fact(FileInfo(KUBERNETES_TOKEN)) is not None:
        kubernetes_api = server.decode().strip()
    return ops.file(
        host,
        CONFIG_PATH,
        render_config(
            settings.charlie,
            prometheus_port=settings.port("Charlie", "prometheus"),
            node_exporter_port=settings.port("Charlie", "node-exporter"),
            hostname=hostname,
            kubernetes_api=kubernetes_api,
        ),
        validate=VALIDATE,
    )


@step("Prometheus and node_exporter")
def apply(ctx: Context) -> None:
    """Prometheus and node_exporter installed, configured and serving."""
    host, settings = ctx.host, ctx.settings
    charlie = settings.charlie
    prometheus_port = settings.port("Charlie", "prometheus")
    node_exporter_port = settings.port("Charlie", "node-exporter")
    with host.step("Prometheus and node_exporter"):
        with host.step("systemd drop-ins before the packages' first start") as flags:
            for unit in (PROMETHEUS, NODE_EXPORTER):
                ops.directory(host, f"/etc/systemd/system/{unit}.service.d")
            ops.template(
                host,
                dropin_path(PROMETHEUS),
                TEMPLATES / "prometheus.service.conf.j2",
                {
                    "config_path": CONFIG_PATH,
                    "listen": f"0.0.0.0:{prometheus_port}",
                    "storage_path": STORAGE_PATH,
                    "retention": charlie.retention,
                },
            )
            ops.template(
                host,
                dropin_path(NODE_EXPORTER),
                TEMPLATES / "node-exporter.service.conf.j2",
                {"listen": f"0.0.0.0:{node_exporter_port}"},
            )
            ops.daemon_reload(host, force=flags.changed)
        ops.packages(host, [charlie.prometheus_package, charlie.node_exporter_package])
        config = scrape_config(ctx)
        ops.service(host, NODE_EXPORTER, enabled=True, running=True, restart=flags.changed)
        ops.service(
            host,
            PROMETHEUS,
            enabled=True,
            running=True,
            restart=flags.changed,
            reload=config.changed and not flags.changed,
        )


# -- outside-in verification ---------------------------------------------------------------


class PrometheusError(Exception):
    pass


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    url: str
    health: str
    last_error: str


class PrometheusAPI:
    """The HTTP API of one Prometheus server (``http://address:port``)."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def ready(self) -> tuple[int, str]:
        """(HTTP status, body) of /-/ready; status 0 while nothing accepts connections
        (a restarted server opens its port only after loading its TSDB)."""
        try:
            response = requests.get(f"{self.base_url}/-/ready", timeout=self.timeout)
        except requests.ConnectionError as exc:
            return 0, str(exc)
        return response.status_code, response.text.strip()

    def _api(self, path: str, params: dict[str, str] | None = None) -> Any:
        response = requests.get(f"{self.base_url}/api/v1/{path}", params=params, timeout=self.timeout)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"GET /api/v1/{path} {params or ''}: {response.status_code} {body}")
        return body["data"]

    def targets(self) -> list[ScrapeTarget]:
        data = self._api("targets", {"state": "active"})
        return [
            ScrapeTarget(
                job=target["labels"].get("job", ""),
                url=target.get("scrapeUrl", ""),
                health=target.get("health", ""),
                last_error=target.get("lastError", ""),
            )
            for target in data["activeTargets"]
        ]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector result: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
        data = self._api("query", {"query": promql})
        if data.get("resultType") != "vector":
            raise PrometheusError(f"query {promql!r} returned {data.get('resultType')}, not a vector")
        return list(data["result"])
