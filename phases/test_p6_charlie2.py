"""Team Charlie-2 (phase 6): full monitoring, alerting and central logs.

Apply Alertmanager (Debian) on the primary with its routes and receivers, the team's alert
rules (host down, disk filling, certificate expiry, containerd, flintlock and the API server
down, etcd without quorum, a backup older than its schedule allows, the virtual IP not held) in
Charlie's Prometheus with the metrics they read (a textfile exporter; scrape jobs for etcd and
the virtual IP), and the fleet's journals on the logs host (journal-remote there, journal-upload
on every host the suite logs in to, over TLS with certificates of Alpha's CA; Alpha's firewall
on the logs host).

Then prove it: Prometheus evaluates every rule of the project's rule file and sends to
Alertmanager; the metrics the rules read are scraped and agree with the hosts; no critical alert fires
on the built fleet; node_exporter stopped on a host fires HostDown at a webhook receiver on the
controller within its bound, and the resolved notification follows its start (measured, in the
reports directory and Allure); a fleet host verifies the logs host's certificate against the
suite's CA; a line with this run's nonce written on each host is found in the central journal on
the logs host, and a host whose line is missing is named.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path

import allure
import pytest

from apply.api import Context
from apply.facts import SSHSession
from apply.poll import eventually
from apply.runner import Host
from checks import alerting as alert_checks
from checks import logs as log_checks
from checks.prometheus import PrometheusAPI
from engine import apply_fixture, not_applicable
from settings.base import Role
from settings.model import Settings
from steps.alpha import tls
from steps.charlie import prometheus
from steps.charlie2 import alerting, journal
from steps.golf1 import restic

pytestmark = [pytest.mark.usefixtures("applied", "applied_logs"), pytest.mark.smoke]

DRILL_REPORT = "charlie2-alert-drill.json"
# A first scrape of a new job or textfile, and a rule's first evaluation, take a few intervals.
CONVERGE_TIMEOUT = 120.0


@dataclass(frozen=True)
class FleetHosts:
    """Every host of the inventory: those the suite logs in to, and why the others are left out."""

    members: list  # targets.plugin.Member, by name
    left_out: dict[str, str]


@pytest.fixture(scope="module")
def fleet_hosts(fleet, settings: Settings) -> FleetHosts:
    no_login = {host.name for host in settings.hosts if not host.login}
    members, left_out = {}, {}
    for role in dict.fromkeys(role for host in settings.hosts for role in host.roles):
        for target in fleet.fleet.with_role(role):
            if target.name in no_login:
                left_out[target.name] = (
                    f"hosts[{target.name}].login = false: the suite never opens a shell there, so it "
                    "runs no journal-upload"
                )
            elif target.name not in members:
                members[target.name] = fleet.state.member(target)
    return FleetHosts(list(members.values()), left_out)


@apply_fixture
def applied(ctx: Context) -> None:
    alerting.apply(ctx)


@apply_fixture
def applied_logs(ctx: Context, fleet, fleet_hosts: FleetHosts) -> None:
    logs = fleet.context(fleet.one(Role.LOGS))
    journal.apply(ctx, logs, [fleet.context(member) for member in fleet_hosts.members])


@pytest.fixture(scope="module")
def prometheus_url(target, settings: Settings) -> str:
    return f"http://{target.address}:{settings.port('Charlie', 'prometheus')}"


@pytest.fixture(scope="module")
def alertmanager_url(target, settings: Settings) -> str:
    return f"http://{target.address}:{settings.port('Charlie-2', settings.charlie2.alertmanager.port)}"


def _values(api: PrometheusAPI, promql: str) -> dict[str, float]:
    """{a label set as text: value} of an instant query."""
    return {
        json.dumps({k: v for k, v in sorted(s["metric"].items()) if k != "__name__"}): float(s["value"][1])
        for s in api.query(promql)
    }


# -- Alerting rules ---------------------------------------------------------------------


@pytest.mark.task("Alerting rules")
def test_prometheus_evaluates_every_rule_of_the_project(prometheus_url: str) -> None:
    wanted = set(alerting.alert_names())
    rules = eventually(
        lambda: alert_checks.prometheus_rules(prometheus_url),
        lambda found: wanted <= {rule["name"] for rule in found if rule.get("health") == "ok"},
        timeout=CONVERGE_TIMEOUT,
    )
    health = {rule["name"]: (rule.get("health"), rule.get("lastError", "")) for rule in rules}
    assert wanted <= {name for name, (state, _) in health.items() if state == "ok"}, health


@pytest.mark.task("Alerting rules")
def test_prometheus_sends_its_alerts_to_alertmanager(prometheus_url: str, settings: Settings) -> None:
    address = alerting.alertmanager_address(settings)
    urls = eventually(
        lambda: alert_checks.prometheus_alertmanagers(prometheus_url),
        lambda found: any(address in url for url in found),
        timeout=CONVERGE_TIMEOUT,
    )
    assert any(address in url for url in urls), urls


@pytest.mark.task("Alerting rules")
def test_alertmanager_answers_the_controller_as_one_instance(alertmanager_url: str) -> None:
    status = alert_checks.alertmanager_status(alertmanager_url)
    # No cluster listener: a second port would be undeclared, and one instance needs none.
    assert status["cluster"]["status"] == "disabled", status["cluster"]
    assert alerting.CONTROLLER_RECEIVER in status["config"]["original"]


@pytest.mark.task("Alerting rules")
def test_no_critical_alert_fires_on_the_built_fleet(prometheus_url: str) -> None:
    api = PrometheusAPI(prometheus_url)
    names = "|".join(alerting.alert_names())
    firing = _values(api, f'ALERTS{{alertstate="firing", alertname=~"{names}"}}')
    # Warnings are reported, not failed: on scratch the servers share the controller's disk,
    # whose filling DiskFillingUp rightly reports.
    allure.attach(
        json.dumps(firing, indent=2), name="firing alerts", attachment_type=allure.attachment_type.JSON
    )
    critical = {labels: value for labels, value in firing.items() if '"severity": "critical"' in labels}
    assert not critical, critical


@pytest.mark.task("Alerting rules")
@pytest.mark.full
def test_a_stopped_exporter_alerts_the_controller_and_resolves(
    remote: Host, settings: Settings, reports_dir: Path
) -> None:
    am = settings.charlie2.alertmanager
    if not am.controller_receiver:
        not_applicable("charlie2.alertmanager.controller_receiver is off: no receiver on the controller")
    # Alertmanager posts to the address the host sees the controller's SSH connection come from.
    bind = remote.fact(SSHSession()).client
    instance = remote.run("hostname").stdout.strip()
    drill = settings.charlie2.drill
    with alert_checks.webhook_receiver(bind, am.controller_port, am.controller_path) as receiver:
        result = alert_checks.stop_exporter_drill(
            remote,
            prometheus.NODE_EXPORTER,
            receiver,
            alert="HostDown",
            instance=instance,
            firing_bound=drill.firing_seconds,
            resolved_bound=drill.resolved_seconds,
        )
    text = result.as_json()
    (reports_dir / DRILL_REPORT).write_text(text + "\n")
    allure.attach(text, name="alert drill", attachment_type=allure.attachment_type.JSON)
    assert result.firing_seconds is not None, (
        f"HostDown for {instance} did not reach {receiver.url} within {drill.firing_seconds} s "
        f"({result.notifications} other notifications)"
    )
    assert result.resolved_seconds is not None, (
        f"HostDown for {instance} was not resolved at {receiver.url} within {drill.resolved_seconds} s"
    )


# -- Advanced metrics -------------------------------------------------------------------


@pytest.mark.task("Advanced metrics")
def test_the_watched_units_are_exported_as_the_host_runs_them(prometheus_url: str, host) -> None:
    api = PrometheusAPI(prometheus_url)
    exported = eventually(
        lambda: _values(api, "hvsuite_systemd_unit_active"),
        lambda found: bool(found),
        timeout=CONVERGE_TIMEOUT,
    )
    live = {}
    for labels in exported:
        unit = json.loads(labels)["unit"]
        live[labels] = 1.0 if host.run(f"systemctl is-active --quiet {shlex.quote(unit)}").rc == 0 else 0.0
    assert exported == live
    assert any('"containerd.service"' in labels for labels in exported), exported


@pytest.mark.task("Advanced metrics")
def test_certificate_expiry_is_exported_for_alphas_certificates(
    prometheus_url: str, remote: Host, settings: Settings, certs: tls.Paths
) -> None:
    api = PrometheusAPI(prometheus_url)
    path = certs.cert("server")
    exported = eventually(
        lambda: _values(api, f'hvsuite_cert_not_after_seconds{{path="{path}"}}'),
        lambda found: bool(found),
        timeout=CONVERGE_TIMEOUT,
    )
    cert = tls.parse_cert(remote.read(path) or b"")
    assert list(exported.values()) == [cert.not_valid_after_utc.timestamp()], exported


@pytest.mark.task("Advanced metrics")
def test_the_newest_backup_is_exported_from_the_repository(prometheus_url: str, remote: Host) -> None:
    api = PrometheusAPI(prometheus_url)
    snapshots = json.loads(
        remote.run(f"{restic.WRAPPER} snapshots --no-lock --json --tag {restic.TAG}").stdout
    )
    newest = max(dt.datetime.fromisoformat(s["time"]).timestamp() for s in snapshots)
    exported = eventually(
        lambda: _values(api, "hvsuite_backup_last_success_timestamp_seconds"),
        lambda found: [int(v) for v in found.values()] == [int(newest)],
        timeout=CONVERGE_TIMEOUT,
    )
    assert [int(v) for v in exported.values()] == [int(newest)], (exported, newest)
    assert _values(api, "hvsuite_backup_repository_readable") and all(
        v == 1 for v in _values(api, "hvsuite_backup_repository_readable").values()
    )


@pytest.mark.task("Advanced metrics")
def test_etcd_has_a_leader_and_the_virtual_ip_answers_prometheus(
    prometheus_url: str, settings: Settings
) -> None:
    api = PrometheusAPI(prometheus_url)
    jobs = [alerting.ETCD_JOB] + ([alerting.VIP_JOB] if settings.foxtrot.virtual_ip else [])
    up = eventually(
        lambda: {job: _values(api, f'up{{job="{job}"}}') for job in jobs},
        lambda found: all(found[job] and all(v == 1 for v in found[job].values()) for job in jobs),
        timeout=CONVERGE_TIMEOUT,
    )
    assert all(up[job] and all(v == 1 for v in up[job].values()) for job in jobs), up
    assert set(_values(api, f'etcd_server_has_leader{{job="{alerting.ETCD_JOB}"}}').values()) == {1.0}


# -- Log aggregation --------------------------------------------------------------------


@pytest.mark.task("Log aggregation")
def test_an_uploader_verifies_the_logs_host_against_the_suites_ca(
    fleet, fleet_hosts: FleetHosts, settings: Settings
) -> None:
    logs = fleet.one(Role.LOGS)
    others = [member for member in fleet_hosts.members if member.target.name != logs.target.name]
    if not others:
        not_applicable("the logs host is the inventory's only host: no other host uploads to it")
    address, port = logs.target.address, settings.port("Charlie-2", settings.charlie2.journal.port)
    ca = journal.paths(settings.charlie2.journal).ca
    # What journal-upload checks before it sends: the chain to the suite's CA and the address.
    handshake = others[0].remote.run(
        f"openssl s_client -connect {address}:{port} -CAfile {shlex.quote(ca)} -verify_return_error "
        f"-verify_ip {address} </dev/null",
        check=False,
    )
    assert handshake.ok and "Verify return code: 0 (ok)" in handshake.stdout, handshake.stdout[-2000:]


@pytest.mark.task("Log aggregation")
@pytest.mark.full
def test_every_hosts_journal_reaches_the_logs_host(
    fleet, fleet_hosts: FleetHosts, settings: Settings
) -> None:
    conf = settings.charlie2.journal
    nonce = secrets.token_hex(8)
    expected: dict[str, str] = {}
    for member in fleet_hosts.members:
        hostname = member.remote.run("hostname").stdout.strip()
        expected[hostname] = member.target.name
        log_checks.write_marker(member.remote, conf.identifier, f"charlie2 log check {nonce} from {hostname}")
    logs = fleet.one(Role.LOGS).remote
    found = eventually(
        lambda: log_checks.hostnames_with(logs, journal.REMOTE_DIR, conf.identifier, nonce),
        lambda got: set(expected) <= set(got),
        timeout=conf.check_timeout,
        interval=2.0,
    )
    if fleet_hosts.left_out:
        allure.attach("\n".join(f"{n}: {why}" for n, why in fleet_hosts.left_out.items()), name="left out")
    missing = sorted(expected[name] for name in set(expected) - set(found))
    assert not missing, (
        f"no line with nonce {nonce} from {', '.join(missing)} in {journal.REMOTE_DIR} on the logs host "
        f"within {conf.check_timeout} s"
        + (f"; left out: {fleet_hosts.left_out}" if fleet_hosts.left_out else "")
    )
