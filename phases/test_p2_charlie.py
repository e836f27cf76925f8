"""Team Charlie (phase 2): basic monitoring.

Apply Prometheus and node_exporter from the OS archive on their declared ports (Prometheus
off 9090, which flintlock holds) and Grafana from its pinned .deb. Verify from the
controller over HTTP: Prometheus ready, every scrape target up, PromQL returns this host's
node series; Grafana health, datasource health and the host dashboard where Grafana exists.
"""

from __future__ import annotations

import pytest

from apply.api import Applied, Context
from apply.poll import eventually
from checks.grafana import GrafanaAPI
from checks.prometheus import PrometheusAPI
from engine import apply_fixture
from settings.model import Settings
from steps.charlie import grafana, prometheus

pytestmark = [pytest.mark.usefixtures("applied"), pytest.mark.smoke]

# Prometheus scrapes every scrape_interval; a fresh server needs one round before "up".
CONVERGE_TIMEOUT = 90.0


@apply_fixture
def applied(ctx: Context) -> Applied:
    return prometheus.apply(ctx)


@pytest.fixture(scope="module")
def prometheus_api(target, settings: Settings) -> PrometheusAPI:
    return PrometheusAPI(f"http://{target.address}:{settings.port('Charlie', 'prometheus')}")


@apply_fixture
def applied_grafana(ctx: Context) -> Applied:
    return grafana.apply(ctx)


@pytest.fixture(scope="module")
def grafana_api(remote, target, settings: Settings, applied_grafana) -> GrafanaAPI:
    password_file = settings.charlie.grafana.admin_password_file
    password = (remote.read(password_file) or b"").decode().strip()
    assert password, f"{password_file} is empty or missing"
    remote.redactor.add(password)
    return GrafanaAPI(
        f"http://{target.address}:{settings.port('Charlie', 'grafana')}",
        settings.charlie.grafana.admin_user,
        password,
    )


@pytest.mark.task("Deploy Prometheus")
def test_prometheus_is_ready_from_the_controller(prometheus_api: PrometheusAPI) -> None:
    status, body = eventually(prometheus_api.ready, lambda answer: answer[0] == 200, timeout=30)
    assert status == 200, body


@pytest.mark.task("Deploy Prometheus")
def test_prometheus_listens_on_its_declared_port_not_flintlocks(host, settings: Settings) -> None:
    port = settings.port("Charlie", "prometheus")
    listeners = host.check_output("ss -Htlnp")
    prometheus_ports = {
        line.split()[3].rsplit(":", 1)[1] for line in listeners.splitlines() if '"prometheus"' in line
    }
    assert prometheus_ports == {str(port)}, listeners


@pytest.mark.task("Deploy Prometheus")
def test_every_scrape_target_is_up(prometheus_api: PrometheusAPI) -> None:
    targets = eventually(
        prometheus_api.targets,
        lambda found: bool(found) and all(t.health == "up" for t in found),
        timeout=CONVERGE_TIMEOUT,
    )
    assert {t.job for t in targets} >= {"prometheus", "node"}
    down = [f"{t.job} {t.url}: {t.health} {t.last_error}" for t in targets if t.health != "up"]
    assert not down, down


@pytest.mark.task("Deploy Prometheus")
def test_live_config_passes_promtool(host) -> None:
    result = host.run(f"promtool check config {prometheus.CONFIG_PATH}")
    assert result.rc == 0, result.stdout + result.stderr


@pytest.mark.task("Configure node_exporter")
def test_node_exporter_serves_metrics_to_the_controller(target, settings: Settings) -> None:
    import requests

    port = settings.port("Charlie", "node-exporter")
    response = requests.get(f"http://{target.address}:{port}/metrics", timeout=10)
    assert response.status_code == 200
    assert "node_uname_info{" in response.text


@pytest.mark.task("Configure node_exporter")
def test_promql_returns_this_hosts_node_series(prometheus_api: PrometheusAPI, host) -> None:
    nodename = host.check_output("uname -n")
    series = eventually(
        lambda: prometheus_api.query('node_uname_info{job="node"}'),
        lambda result: any(s["metric"].get("nodename") == nodename for s in result),
        timeout=CONVERGE_TIMEOUT,
    )
    assert [s["metric"].get("nodename") for s in series] == [nodename]
    load = prometheus_api.query('node_load1{job="node"}')
    assert load and float(load[0]["value"][1]) >= 0.0


@pytest.mark.task("Setup basic Grafana")
@pytest.mark.requires("upstream-artifacts")
def test_grafana_is_healthy(grafana_api: GrafanaAPI) -> None:
    health = eventually(grafana_api.health, lambda answer: answer.get("database") == "ok", timeout=60)
    assert health.get("database") == "ok", health


@pytest.mark.task("Setup basic Grafana")
@pytest.mark.requires("upstream-artifacts")
def test_grafana_prometheus_datasource_is_healthy(grafana_api: GrafanaAPI, settings: Settings) -> None:
    status, body = grafana_api.datasource_health(settings.charlie.grafana.datasource_uid)
    assert status == 200 and body.get("status") == "OK", body


@pytest.mark.task("Setup basic Grafana")
@pytest.mark.requires("upstream-artifacts")
def test_grafana_host_dashboard_exists(grafana_api: GrafanaAPI, settings: Settings) -> None:
    status, body = grafana_api.dashboard(settings.charlie.grafana.dashboard_uid)
    assert status == 200, body
    assert body["dashboard"]["title"] == "Hypervisor host"
    assert body["dashboard"]["panels"], "the host dashboard has no panels"
