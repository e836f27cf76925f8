"""Team Charlie-2's steps as data: the settings it accepts, Alertmanager's config and drop-in,
the textfile exporter, the backup's allowed age, its contributions to Charlie's Prometheus, and
the journal's certificates (requested and signed with openssl, as on the hosts)."""

from __future__ import annotations

import datetime as dt
import itertools
import subprocess
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import ValidationError

from apply.extensions import hooks
from apply.facts import AptListsAge, DebPackages, FileInfo, ServiceState, SSHSession
from apply.runner import ApplyError
from apply.testing import FakeConnection, fake_context, fake_host
from settings.loader import load_settings
from steps.alpha import tls
from steps.charlie import prometheus
from steps.charlie2 import alerting, journal
from steps.charlie2.settings import AlertmanagerSettings, Receiver, RuleSettings

SETTINGS = load_settings()
RULE = f"{alerting.RULES_DIR}/alerts.yml"
PRESENT = "regular file|root|root|644|10\n"


# -- settings --------------------------------------------------------------------------


def test_a_receiver_without_an_http_url_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"charlie2\.alertmanager\.receivers\[\]\.webhooks: 'ftp://x'"):
        Receiver(name="ops", webhooks=["ftp://x"])
    with pytest.raises(
        ValidationError, match=r"severities \['info'\]: name one or more of critical, warning"
    ):
        Receiver(name="ops", webhooks=["https://x.example/h"], severities=["info"])


def test_receiver_names_are_unique_and_not_the_suites_own() -> None:
    hook = ["https://x.example/h"]
    with pytest.raises(ValidationError, match=r"ops, hvsuite-controller named twice or reserved"):
        AlertmanagerSettings(
            receivers=[
                Receiver(name="ops", webhooks=hook),
                Receiver(name="ops", webhooks=hook),
                Receiver(name="hvsuite-controller", webhooks=hook),
            ]
        )


def test_bad_rule_settings_are_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"charlie2\.rules\.alert_for: HostDown='soon'"):
        RuleSettings(alert_for={"HostDown": "soon"})
    with pytest.raises(ValidationError, match=r"charlie2\.rules\.units: 'containerd' are not unit names"):
        RuleSettings(units=["containerd"])
    with pytest.raises(ValidationError, match=r"charlie2\.rules\.certificates: 'pki/\*\.crt'"):
        RuleSettings(certificates=["pki/*.crt"])


# -- Alertmanager ----------------------------------------------------------------------


def test_every_alert_reaches_the_controller_and_operators_by_severity() -> None:
    charlie2 = load_settings(
        None,
        {
            "charlie2": {
                "alertmanager": {
                    "receivers": [
                        {"name": "pager", "webhooks": ["https://p.example/h"], "severities": ["critical"]}
                    ]
                }
            }
        },
    ).charlie2
    config = alerting.alertmanager_config(charlie2, "http://192.0.2.1:9781/hvsuite-charlie2/alerts")
    route = config["route"]
    assert route["receiver"] == "blackhole"
    assert route["routes"] == [
        {"receiver": "hvsuite-controller", "continue": True},
        {"receiver": "pager", "matchers": ['severity=~"critical"'], "continue": True},
    ]
    webhooks = {r["name"]: [w["url"] for w in r.get("webhook_configs", [])] for r in config["receivers"]}
    assert webhooks == {
        "blackhole": [],
        "hvsuite-controller": ["http://192.0.2.1:9781/hvsuite-charlie2/alerts"],
        "pager": ["https://p.example/h"],
    }
    assert alerting.alertmanager_config(charlie2, None)["route"]["routes"][0]["receiver"] == "pager"


def test_the_controller_url_brackets_an_ipv6_address() -> None:
    assert alerting.controller_url(SETTINGS.charlie2, "2001:db8::1").startswith("http://[2001:db8::1]:9781/")


def test_alertmanager_listens_on_its_declared_port_without_a_cluster_listener() -> None:
    dropin = alerting.render_alertmanager_dropin(SETTINGS.port("Charlie-2", "alertmanager"))
    assert "--web.listen-address=0.0.0.0:9093" in dropin
    assert dropin.rstrip().endswith("--cluster.listen-address=")
    assert f"ConditionPathExists={alerting.AM_CONFIG}" in dropin


def fresh_primary(mode: str = "apply") -> tuple[FakeConnection, object]:
    conn = FakeConnection()
    conn.set_fact(SSHSession(), "192.0.2.1 50000 192.0.2.10 22\n")
    conn.set_fact(FileInfo(RULE), "")
    conn.set_fact(DebPackages(), "")
    conn.set_fact(AptListsAge(), "now=1000\nnewest=900\n")
    conn.set_fact(
        ServiceState(alerting.ALERTMANAGER),
        "LoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\n",
    )
    return conn, fake_host(conn, mode=mode)  # type: ignore[arg-type]


def test_alertmanagers_drop_in_comes_before_its_package_and_its_config_is_checked() -> None:
    conn, host = fresh_primary()
    alerting.alertmanager(fake_context(host, profile="scratch"))  # type: ignore[arg-type]
    dropin = next(i for i, c in enumerate(conn.commands) if "hvsuite.conf" in c and "mv -f" in c)
    install = next(i for i, c in enumerate(conn.commands) if "apt-get" in c and "install" in c)
    assert dropin < install
    assert any(c.startswith("amtool check-config ") for c in conn.commands)
    written = conn.files[alerting.AM_CONFIG].decode()
    assert "http://192.0.2.1:9781/hvsuite-charlie2/alerts" in written


def test_check_mode_writes_nothing() -> None:
    conn, host = fresh_primary(mode="check")
    alerting.alertmanager(fake_context(host, profile="scratch"))  # type: ignore[arg-type]
    assert conn.uploads == [] and host.changes  # type: ignore[attr-defined]
    assert not any("apt-get" in c and "install" in c for c in conn.commands)


# -- the textfile exporter and the backup's age ---------------------------------------------


def test_a_daily_schedule_allows_a_day_plus_the_delay_and_grace() -> None:
    day = 86400
    assert alerting.backup_max_age([0, day, 2 * day], "15min", 3600) == day + 900 + 3600
    # Weekdays only: the weekend's gap counts.
    assert alerting.backup_max_age([0, day, 4 * day], "0", 0) == 3 * day
    with pytest.raises(ApplyError, match="a backup schedule must repeat"):
        alerting.backup_max_age([0], "0", 0)


def test_the_calendar_fact_reads_systemds_elapses() -> None:
    fact = alerting.CalendarElapses("*-*-* 03:15:00", iterations=3)
    out = subprocess.run(["sh", "-c", fact.command], capture_output=True, text=True, check=True).stdout
    elapses = fact.parse(out)
    assert len(elapses) == 3 and {b - a for a, b in itertools.pairwise(elapses)} == {86400}


def test_the_exporter_is_valid_shell_and_reads_what_the_rules_need(tmp_path: Path) -> None:
    script = alerting.render_exporter(SETTINGS, 93600)
    (tmp_path / "x.sh").write_text(script)
    subprocess.run(["sh", "-n", str(tmp_path / "x.sh")], check=True)
    for series in (
        "hvsuite_systemd_unit_active",
        "hvsuite_cert_not_after_seconds",
        "hvsuite_backup_last_success_timestamp_seconds",
        "hvsuite_backup_max_age_seconds 93600",
        "hvsuite_backup_repository_readable",
        "hvsuite_textfile_generated_seconds",
    ):
        assert series in script
    assert f"{SETTINGS.alpha.tls.cert_dir}/*.pem" in script and "--no-lock" in script


# -- Charlie's Prometheus ----------------------------------------------------------------


def test_nothing_is_contributed_before_the_rules_are_on_the_host() -> None:
    _, host = fresh_primary()
    ctx = fake_context(host)  # type: ignore[arg-type]
    assert hooks().prometheus_rule_files(ctx=ctx) == []
    contributed = prometheus.Contributions.collect(ctx)
    assert contributed.rule_files == () and contributed.alertmanagers == ()
    assert not any(job["job_name"] in ("etcd", "kubernetes-vip") for job in contributed.scrape_jobs)


def test_once_installed_charlie_names_the_rules_alertmanager_and_the_jobs() -> None:
    conn = FakeConnection()
    conn.set_fact(FileInfo(RULE), PRESENT)
    conn.set_fact(FileInfo("/etc/prometheus/kubernetes/token"), PRESENT)
    settings = load_settings(None, {"foxtrot": {"virtual_ip": "10.231.0.250"}})
    ctx = fake_context(fake_host(conn), settings)
    contributed = prometheus.Contributions.collect(ctx)
    assert contributed.rule_files == (RULE,)
    assert contributed.alertmanagers == ({"static_configs": [{"targets": ["127.0.0.1:9093"]}]},)
    jobs = {job["job_name"]: job for job in contributed.scrape_jobs}
    assert jobs["etcd"]["static_configs"] == [{"targets": ["127.0.0.1:2381"]}]
    assert jobs["kubernetes-vip"]["static_configs"] == [{"targets": ["10.231.0.250:8443"]}]
    config = prometheus.render_config(
        settings.charlie, prometheus_port=9095, node_exporter_port=9100, hostname="h", contributed=contributed
    )
    assert "rule_files:\n  - /etc/prometheus/hvsuite-charlie2/alerts.yml" in config
    assert "alerting:\n  alertmanagers:" in config


# -- the journal's certificates ----------------------------------------------------------


def test_the_journal_configs_name_the_certificates_and_the_logs_host() -> None:
    conf = SETTINGS.charlie2.journal
    upload = journal.render_upload_conf(conf, journal.url("10.231.0.9", 19532))
    assert (
        "URL=https://10.231.0.9:19532" in upload
        and "TrustedCertificateFile=/etc/hvsuite-charlie2/ca.pem" in upload
    )
    remote = journal.render_remote_conf(conf)
    assert "ServerKeyFile=/etc/hvsuite-charlie2/journal-remote-key.pem" in remote


def test_a_request_signed_with_the_ca_is_a_valid_journal_certificate(tmp_path: Path) -> None:
    tls_settings = SETTINGS.alpha.tls
    ca = tls.Paths(str(tmp_path))
    key = tmp_path / "journal-remote-key.pem"

    def sh(command: str) -> str:
        return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout

    (tmp_path / "openssl-hvsuite.cnf").write_text(tls.openssl_config(["ca"]))
    sh(tls.issue_ca_command(ca, tls_settings))
    sh(tls.genkey_command(tls_settings.key_type, str(key)))
    sans = ["logs", "10.231.0.9"]
    request = sh(journal.request_command(str(key), "logs", sans, "serverAuth"))
    signed = sh(journal.sign_command(request, ca, tls_settings.cert_days, "0a1b2c"))
    problems = tls.leaf_problems(
        tls.parse_cert(signed.encode()),
        sh(f"openssl pkey -in {key} -pubout").strip(),
        tls.parse_cert((tmp_path / "ca.pem").read_bytes()),
        sans,
        ExtendedKeyUsageOID.SERVER_AUTH,
        tls_settings,
        dt.datetime.now(dt.UTC),
    )
    assert problems == []
    assert not (tmp_path / "ca.srl").exists()  # the CA's files are left as they were
