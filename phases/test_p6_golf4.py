"""Team Golf-4 (phase 6): developer experience.

Apply the operator dashboard on the primary host as a systemd service on the port declared as
"hvsuite-dashboard" (admin-only): a web page, an HTTP API with its OpenAPI document (FastAPI,
Debian's), and the operator's `hvsuite` command. Publish what the controller has recorded
(the verdicts for this target, the completion signals, the last timeline, the plan and the
fleet) to the host, where the service reads it; publishing is a report upload, not a change.

Then prove it: the OpenAPI document validates and every path in it answers as documented; the
API and the page in a real headless browser (Debian's chromium) show every team of the plan
with the outcome the controller recorded for it, and the timeline chart is drawn; host health
is what Prometheus answers the controller; the microVMs are what flintlock's state holds; the
port answers the controller and is closed to the probe; `hvsuite status --json` on the host
answers with the same outcomes, and every command of it answers like the API.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import allure
import pytest
import requests

from apply.api import Applied, Context
from apply.poll import eventually
from apply.runner import Host
from checks import dashboard, probes
from checks.dashboard import DashboardClient, PageView
from checks.prometheus import PrometheusAPI, PrometheusError
from engine import apply_fixture
from engine.config import target_name
from engine.plan import load_plan
from settings.model import DEFAULT_PLAN, Settings
from steps.base import flintlock
from steps.golf4 import dashboard as service
from steps.golf4 import publish
from steps.golf4.app.health import NODE_QUERIES

pytestmark = [pytest.mark.usefixtures("applied"), pytest.mark.smoke]

SCREENSHOT = "golf4-dashboard.png"
# node_exporter figures that stay the same between the service's query and the check's.
STEADY_FIGURES = {"memory_total_bytes", "root_size_bytes"}


@apply_fixture
def applied(ctx: Context) -> Applied:
    return service.apply(ctx)


@pytest.fixture(scope="module")
def published(applied: Applied, remote: Host, settings: Settings, reports_dir: Path, fleet, request) -> dict:
    """What the controller has recorded, published to the host now (a report upload)."""
    hosts = [
        publish.FleetHost(member.name, member.address, tuple(member.roles)) for member in fleet.fleet.members
    ]
    document = publish.publish(
        remote, settings, reports_dir, target_name=target_name(request.config), fleet=hosts
    )
    assert document is not None, f"nothing published: {settings.golf4.data_dir} is missing on the host"
    allure.attach(
        json.dumps(document, indent=1), name="published reports", attachment_type=allure.attachment_type.JSON
    )
    return document


@pytest.fixture(scope="module")
def client(published: dict, target, settings: Settings) -> DashboardClient:
    api = DashboardClient(f"http://{target.address}:{settings.port('Golf-4', settings.golf4.port_name)}")
    status = api.wait_until_serving(timeout=60)
    assert status == 200, f"{api.base_url}/openapi.json answered {status or 'nothing'} within 60 s"
    return api


@pytest.fixture(scope="module")
def spec(client: DashboardClient) -> dict:
    return client.json("/openapi.json")


@pytest.fixture(scope="module")
def expected(published: dict) -> dict[str, str]:
    return dashboard.expected_outcomes(published)


@pytest.fixture(scope="module")
def page(client: DashboardClient, reports_dir: Path) -> PageView:
    view = dashboard.browse(client.base_url, timeout=30)
    (reports_dir / SCREENSHOT).write_bytes(view.screenshot)
    allure.attach(view.screenshot, name="dashboard", attachment_type=allure.attachment_type.PNG)
    return view


# -- API docs ------------------------------------------------------------------------------


@pytest.mark.task("API docs")
def test_the_openapi_document_validates(spec: dict) -> None:
    version = dashboard.validate_document(spec)
    assert version.startswith("3."), version
    assert {"/api/status", "/api/signals", "/api/timeline", "/api/hosts", "/api/microvms"} <= set(
        spec["paths"]
    )


@pytest.mark.task("API docs")
def test_every_documented_path_answers_as_documented(client: DashboardClient, spec: dict) -> None:
    found = dashboard.answers(client, spec)
    assert found, "the document has no path"
    wrong = [f"{a.path}: {a.status} {a.content_type}: {'; '.join(a.problems)}" for a in found if a.problems]
    assert not wrong, "\n".join(wrong)
    # Everything is published, so nothing may answer with its documented 503.
    assert {a.path: a.status for a in found} == dict.fromkeys(spec["paths"], 200)


@pytest.mark.task("API docs")
def test_the_api_docs_page_lists_every_operation(client: DashboardClient, spec: dict) -> None:
    response = client.get("/api/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    listed = dashboard.documented_operations(response.text)
    assert listed == {(method, path) for path, item in spec["paths"].items() for method in item}


# -- Web dashboard -----------------------------------------------------------------------------


@pytest.mark.task("Web dashboard")
def test_the_published_verdicts_are_the_controllers(published: dict, reports_dir: Path, request) -> None:
    # Verdicts are recorded when a run ends, so the controller's file is as it was published.
    name = target_name(request.config)
    recorded = {}
    for path in sorted((reports_dir / "state").glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("target") == name:
            recorded = data["teams"]
    assert published["state"] == recorded
    assert [team["name"] for team in published["plan"]] == [team.name for team in load_plan(DEFAULT_PLAN)]


@pytest.mark.task("Web dashboard")
def test_the_api_shows_every_team_with_its_recorded_outcome(client: DashboardClient, expected: dict) -> None:
    status = client.json("/api/status")
    assert {team["name"]: team["outcome"] for team in status["teams"]} == expected
    assert len(status["teams"]) == len(load_plan(DEFAULT_PLAN).teams)


@pytest.mark.task("Web dashboard")
@pytest.mark.full
def test_the_dashboard_renders_every_team_with_its_recorded_outcome_in_a_browser(
    page: PageView, expected: dict
) -> None:
    assert page.status == 200, page.status
    assert page.teams == expected


@pytest.mark.task("Web dashboard")
@pytest.mark.full
def test_the_timeline_chart_is_drawn_in_a_browser(page: PageView, client: DashboardClient) -> None:
    timeline = client.json("/api/timeline")
    assert timeline["spans"], f"no team on the timeline: {timeline['title']}"
    assert [team for team, _, _ in page.bars] == [span["team"] for span in timeline["spans"]]
    flat = [(team, width, height) for team, width, height in page.bars if width <= 0 or height <= 0]
    assert not flat, f"bars without area: {flat}"


@pytest.mark.task("API docs")
@pytest.mark.full
def test_the_api_docs_page_renders_every_operation_in_a_browser(page: PageView, spec: dict) -> None:
    assert page.operations == {(method, path) for path, item in spec["paths"].items() for method in item}


@pytest.mark.task("Web dashboard")
def test_host_health_is_what_prometheus_answers(
    client: DashboardClient, target, settings: Settings, published: dict
) -> None:
    prometheus = PrometheusAPI(f"http://{target.address}:{settings.port('Charlie', 'prometheus')}")

    def compare() -> tuple[dict, list[str]]:
        """The service's answer and how it differs from Prometheus' answer to the controller."""
        hosts = client.json("/api/hosts")
        if not hosts["prometheus"]["reachable"]:
            return hosts, [f"the service cannot reach Prometheus: {hosts['prometheus']['error']}"]
        problems = []
        try:
            shown = {(t["job"], t["instance"], t["up"]) for t in hosts["targets"]}
            up = {
                (s["metric"]["job"], s["metric"]["instance"], s["value"][1] == "1")
                for s in prometheus.query("up")
            }
            if shown != up:
                problems.append(f"up: shown {sorted(shown)}, Prometheus {sorted(up)}")
            # Each node_exporter figure: the same instances have it (a figure this host's
            # exporter lacks is shown as unknown), and those that do not move are equal.
            for field, promql in NODE_QUERIES.items():
                answer = prometheus.query(promql)
                answered = {s["metric"].get("instance", ""): float(s["value"][1]) for s in answer}
                values = {n["instance"]: n[field] for n in hosts["nodes"] if n[field] is not None}
                if set(values) != set(answered) or (field in STEADY_FIGURES and values != answered):
                    problems.append(f"{field} ({promql}): shown {values}, Prometheus {answered}")
        except (PrometheusError, requests.RequestException) as exc:
            problems.append(f"Prometheus from the controller: {exc}")
        return hosts, problems

    # Phase 6's other teams reload Prometheus and stop an exporter on purpose meanwhile: the
    # two answers agree once no such change falls between them (bounded: 30 s).
    hosts, problems = eventually(compare, lambda found: not found[1], timeout=30)
    assert not problems, "\n".join(problems)
    assert hosts["targets"], "Prometheus has no scrape target"
    assert hosts["fleet"] == published["fleet"]


@pytest.mark.task("Web dashboard")
def test_the_microvms_are_what_flintlock_holds(client: DashboardClient, host, settings: Settings) -> None:
    shown = client.json("/api/microvms")
    vm_dir = f"{settings.base.state_dir}/vm"
    listing = host.run(f"find {shlex.quote(vm_dir)} -mindepth 3 -maxdepth 3 -type d -printf '%P\\n'")
    held = sorted(line for line in listing.stdout.splitlines() if line) if listing.rc == 0 else []
    assert sorted(f"{vm['namespace']}/{vm['name']}/{vm['uid']}" for vm in shown["microvms"]) == held
    active = host.check_output(f"systemctl show -p ActiveState --value {flintlock.UNIT}")
    assert shown["flintlockd"]["error"] is None, shown["flintlockd"]["error"]
    assert shown["flintlockd"]["active_state"] == active
    assert shown["state_dir_present"] == host.file(settings.base.state_dir).is_directory


@pytest.mark.task("Web dashboard")
def test_the_port_answers_the_controller_and_is_closed_to_the_probe(
    client: DashboardClient, fleet, target, settings: Settings
) -> None:
    port = settings.port("Golf-4", settings.golf4.port_name)
    assert client.get("/openapi.json").status_code == 200
    probe = fleet.one("probe")
    scan = probes.scan_ports(target.address, [port], timeout=1.0, via=probe.remote)
    assert port not in scan.open, f"the probe ({probe.target.address}) reaches {target.address}:{port}"
    assert port in scan.refused | scan.filtered


# -- CLI tool ---------------------------------------------------------------------------------


def _cli(host, settings: Settings, arguments: str) -> object:
    result = host.run(f"{shlex.quote(settings.golf4.cli_path)} {arguments}")
    assert result.rc == 0, f"hvsuite {arguments}: exit {result.rc}: {result.stderr}"
    return json.loads(result.stdout)


@pytest.mark.task("CLI tool")
def test_the_cli_answers_status_with_the_recorded_outcomes(host, settings: Settings, expected: dict) -> None:
    status = _cli(host, settings, "status --json")
    assert isinstance(status, dict)
    assert {team["name"]: team["outcome"] for team in status["teams"]} == expected


@pytest.mark.task("CLI tool")
def test_every_cli_command_answers_like_the_api(host, settings: Settings, client: DashboardClient) -> None:
    assert _cli(host, settings, "signals --json --limit 5") == client.json("/api/signals?limit=5")
    assert _cli(host, settings, "timeline --json") == client.json("/api/timeline")
    hosts = _cli(host, settings, "hosts --json")
    assert isinstance(hosts, dict)
    assert hosts["hosts"]["fleet"] == client.json("/api/hosts")["fleet"]
    assert hosts["microvms"] == client.json("/api/microvms")
    table = host.run(f"{shlex.quote(settings.golf4.cli_path)} status")
    assert table.rc == 0 and all(name in table.stdout for name in (t.name for t in load_plan(DEFAULT_PLAN)))
