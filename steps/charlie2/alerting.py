"""Team Charlie-2: alerting on the primary, beside Team Charlie's Prometheus.

- **Alertmanager** from Debian's package, on the port declared as "alertmanager", without its
  cluster listener (one instance; the port would be undeclared). Its systemd drop-in is written
  before the package, as Charlie does for Prometheus, so the package's first start never runs on
  the default config. Its routes send every alert to the controller's receiver (the address the
  host sees the controller's SSH connection come from: the alert drill listens there) and to the
  operator's receivers by severity; the config is checked with ``amtool check-config``.
- **Alert rules** (``rules/alerts.yml``, each alert's ``for:`` from ``charlie2.rules.alert_for``)
  installed for Prometheus, checked with ``promtool check rules``.
- **A textfile exporter**: a timer writes what the rules read and no exporter serves (unit
  states, certificate expiry, the newest snapshot in Golf-1's restic repository and how old the
  schedule lets it get) for node_exporter's textfile collector.
- Charlie's config names the rule file, Alertmanager and two scrape jobs (etcd's local metrics,
  the Kubernetes API through the virtual IP) through its extension points (``hooks.py``), once
  the rule file is on the host; ``steps.charlie.prometheus.reconfigure`` reloads it.
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apply import ops
from apply.api import Context, step
from apply.facts import Fact, FileInfo, SSHSession
from apply.runner import ApplyError
from settings.model import Settings
from steps.charlie import prometheus
from steps.charlie2.settings import Charlie2Settings
from steps.delta import api_metrics, etcd
from steps.golf1 import restic

TEMPLATES = Path(__file__).parent / "templates"
RULES = Path(__file__).parent / "rules"
RULE_FILES = ("alerts.yml",)

ALERTMANAGER = "prometheus-alertmanager"
AM_CONFIG = "/etc/prometheus/hvsuite-alertmanager.yml"
AM_STORAGE = "/var/lib/prometheus/alertmanager"
AM_DROPIN = f"/etc/systemd/system/{ALERTMANAGER}.service.d/hvsuite.conf"
RULES_DIR = "/etc/prometheus/hvsuite-charlie2"
EXPORTER = "hvsuite-charlie2-textfile"
EXPORTER_SCRIPT = f"/usr/local/sbin/{EXPORTER}"
EXPORTER_FILE = "hvsuite-charlie2.prom"
# Debian's node_exporter reads this directory (its default, which Charlie's flags keep).
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
CONTROLLER_RECEIVER = "hvsuite-controller"
ETCD_JOB = "etcd"
VIP_JOB = "kubernetes-vip"


def rule_paths() -> list[str]:
    """Where the rule files are on the host."""
    return [f"{RULES_DIR}/{name}" for name in RULE_FILES]


def installed(ctx: Context) -> bool:
    """Whether this team's alerting is on the host (its rule files are): only then does
    Charlie's config name them, Alertmanager and the team's scrape jobs."""
    return all(ctx.host.fact(FileInfo(path)) is not None for path in rule_paths())


# -- rules --------------------------------------------------------------------------------


def alert_names(name: str = "alerts.yml") -> list[str]:
    """The alerts a project rule file declares."""
    groups = yaml.safe_load((RULES / name).read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def render_rules(charlie2: Charlie2Settings, name: str = "alerts.yml") -> str:
    """Pure: a project rule file with each alert's ``for:`` from charlie2.rules.alert_for."""
    wanted = dict(charlie2.rules.alert_for)
    unknown = sorted(set(wanted) - set(alert_names(name)))
    if unknown:
        raise ApplyError(
            f"charlie2.rules.alert_for names {', '.join(unknown)}, which rules/{name} does not declare; "
            f"use one of {', '.join(alert_names(name))}"
        )
    document = yaml.safe_load((RULES / name).read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in wanted:
                rule["for"] = wanted[rule["alert"]]
    header = (
        f"# Managed by hvsuite (Team Charlie-2): steps/charlie2/rules/{name}, for: from charlie2.rules.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, width=120)


# -- Alertmanager -------------------------------------------------------------------------


def controller_url(charlie2: Charlie2Settings, client: str) -> str:
    """The controller's receiver, at the address the host sees the controller come from."""
    am = charlie2.alertmanager
    host = f"[{client}]" if ":" in client else client
    return f"http://{host}:{am.controller_port}{am.controller_path}"


def alertmanager_config(charlie2: Charlie2Settings, controller: str | None) -> dict[str, Any]:
    """Pure: Alertmanager's config. The root route drops what no child route takes; every
    child continues, so an alert reaches each receiver whose route matches it."""
    am = charlie2.alertmanager
    receivers: list[dict[str, Any]] = [{"name": "blackhole"}]
    routes: list[dict[str, Any]] = []
    if controller:
        receivers.append(
            {"name": CONTROLLER_RECEIVER, "webhook_configs": [{"url": controller, "send_resolved": True}]}
        )
        routes.append({"receiver": CONTROLLER_RECEIVER, "continue": True})
    for receiver in am.receivers:
        receivers.append(
            {
                "name": receiver.name,
                "webhook_configs": [{"url": url, "send_resolved": True} for url in receiver.webhooks],
            }
        )
        routes.append(
            {
                "receiver": receiver.name,
                "matchers": [f'severity=~"{"|".join(receiver.severities)}"'],
                "continue": True,
            }
        )
    return {
        "global": {"resolve_timeout": am.resolve_timeout},
        "route": {
            "receiver": "blackhole",
            "group_by": list(am.group_by),
            "group_wait": am.group_wait,
            "group_interval": am.group_interval,
            "repeat_interval": am.repeat_interval,
            "routes": routes,
        },
        "receivers": receivers,
    }


def render_alertmanager(charlie2: Charlie2Settings, controller: str | None) -> str:
    return "# Managed by hvsuite (Team Charlie-2): changes here are overwritten on the next apply.\n" + (
        yaml.safe_dump(alertmanager_config(charlie2, controller), sort_keys=False)
    )


def render_alertmanager_dropin(port: int) -> str:
    return ops.render(
        TEMPLATES / "alertmanager.service.conf.j2",
        {"config_path": AM_CONFIG, "storage_path": AM_STORAGE, "listen": f"0.0.0.0:{port}"},
    )


def alertmanager_address(settings: Settings) -> str:
    """Where Prometheus on the same host reaches Alertmanager."""
    return f"127.0.0.1:{settings.port('Charlie-2', settings.charlie2.alertmanager.port)}"


# -- textfile exporter --------------------------------------------------------------------


@dataclass(frozen=True)
class CalendarElapses(Fact[list[int]]):
    """The next elapses (epoch seconds) of a systemd calendar expression, as systemd computes them."""

    expression: str
    iterations: int = 8

    @property
    def command(self) -> str:
        return (
            f"TZ=UTC systemd-analyze calendar --iterations={self.iterations} {shlex.quote(self.expression)} "
            "| sed -n 's/^ *\\(Next elapse\\|Iter\\. #[0-9]*\\): //p' "
            '| while read -r when; do date -u -d "$when" +%s; done'
        )

    def parse(self, output: str) -> list[int]:
        return [int(line) for line in output.split()]


def seconds_of(span: str) -> int:
    """Seconds of a span as golf1.randomized_delay writes it ("15min", "2h", "30s", "90")."""
    for suffix, factor in (("min", 60), ("h", 3600), ("s", 1)):
        if span.endswith(suffix):
            return int(span.removesuffix(suffix)) * factor
    return int(span)


def backup_max_age(elapses: list[int], randomized_delay: str, grace: int) -> int:
    """How old the newest backup may be: the longest gap between two scheduled runs, plus the
    timer's randomized delay and a grace for the run itself."""
    if len(elapses) < 2:
        raise ApplyError(
            f"golf1.schedule elapses {len(elapses)} time(s) ahead: a backup schedule must repeat"
        )
    gap = max(later - earlier for earlier, later in itertools.pairwise(elapses))
    return gap + seconds_of(randomized_delay) + grace


def certificate_globs(settings: Settings) -> list[str]:
    """Alpha's certificates, this team's journal certificates and the configured globs."""
    return [
        f"{settings.alpha.tls.cert_dir}/*.pem",
        f"{settings.charlie2.journal.cert_dir}/*.pem",
        *settings.charlie2.rules.certificates,
    ]


def render_exporter(settings: Settings, max_age: int) -> str:
    """Pure: the textfile exporter's script."""
    return ops.render(
        TEMPLATES / "textfile-exporter.sh.j2",
        {
            "textfile_dir": TEXTFILE_DIR,
            "file_name": EXPORTER_FILE,
            "units": " ".join(shlex.quote(unit) for unit in settings.charlie2.rules.units),
            "certificates": " ".join(certificate_globs(settings)),
            "wrapper": restic.WRAPPER,
            "tag": shlex.quote(restic.TAG),
            "backup_max_age": max_age,
        },
    )


@step("Alert rules and the metrics they read")
def rules(ctx: Context) -> None:
    """The rule files for Prometheus and the textfile exporter, run by its timer."""
    host, settings = ctx.host, ctx.settings
    charlie2 = settings.charlie2
    ops.packages(host, ["jq"])
    max_age = backup_max_age(
        host.fact(CalendarElapses(settings.golf1.schedule)),
        settings.golf1.randomized_delay,
        charlie2.rules.backup_grace_seconds,
    )
    ops.file(host, EXPORTER_SCRIPT, render_exporter(settings, max_age), mode="0755", validate="sh -n {path}")
    units = [
        ops.template(
            host,
            f"/etc/systemd/system/{EXPORTER}.{kind}",
            TEMPLATES / f"textfile-exporter.{kind}.j2",
            {"script": EXPORTER_SCRIPT, "unit": EXPORTER, "interval": charlie2.rules.textfile_interval},
        )
        for kind in ("service", "timer")
    ]
    ops.daemon_reload(host, force=any(unit.changed for unit in units))
    ops.service(host, f"{EXPORTER}.timer", enabled=True, running=True, restart=units[1].changed)
    ops.directory(host, RULES_DIR, mode="0755")
    for name, path in zip(RULE_FILES, rule_paths(), strict=True):
        ops.file(host, path, render_rules(charlie2, name), validate="promtool check rules {path}")


@step("Alertmanager")
def alertmanager(ctx: Context) -> None:
    """Alertmanager installed, configured with its routes and receivers, and serving."""
    host, settings = ctx.host, ctx.settings
    charlie2 = settings.charlie2
    am = charlie2.alertmanager
    for receiver in am.receivers:
        for url in receiver.webhooks:
            host.redactor.add(url)  # a webhook URL often carries its token
    controller = controller_url(charlie2, host.fact(SSHSession()).client) if am.controller_receiver else None
    with host.step("systemd drop-in before the package's first start") as flags:
        ops.directory(host, str(Path(AM_DROPIN).parent))
        ops.file(host, AM_DROPIN, render_alertmanager_dropin(settings.port("Charlie-2", am.port)))
        ops.daemon_reload(host, force=flags.changed)
    ops.packages(host, [am.package])
    config = ops.file(
        host,
        AM_CONFIG,
        render_alertmanager(charlie2, controller),
        group="prometheus",
        mode="0640",
        validate="amtool check-config {path}",
        sensitive=bool(am.receivers),
    )
    ops.service(
        host,
        ALERTMANAGER,
        enabled=True,
        running=True,
        restart=flags.changed,
        reload=config.changed and not flags.changed,
    )


def apply(ctx: Context) -> None:
    """Alertmanager, the rules and their metrics, then Charlie's config naming them."""
    alertmanager(ctx)
    rules(ctx)
    prometheus.reconfigure(ctx)


# -- contributions to Charlie's Prometheus (hooks.py) -------------------------------------


def scrape_jobs(ctx: Context) -> list[dict[str, Any]]:
    """etcd's local metrics, and the Kubernetes API through the virtual IP (its up is whether
    a control plane holds the address) with Delta's read-only credentials."""
    settings = ctx.settings
    metrics = etcd.environment("member")["ETCD_LISTEN_METRICS_URLS"].split(",")[0]
    jobs: list[dict[str, Any]] = [
        {"job_name": ETCD_JOB, "static_configs": [{"targets": [metrics.split("://", 1)[1]]}]}
    ]
    vip = settings.foxtrot.virtual_ip
    if vip is not None and ctx.host.fact(FileInfo(api_metrics.TOKEN)) is not None:
        port = settings.port("Foxtrot", settings.foxtrot.api_port)
        jobs.append(
            {
                "job_name": VIP_JOB,
                "scheme": "https",
                "scrape_interval": settings.charlie2.rules.vip_scrape_interval,
                "authorization": {"credentials_file": api_metrics.TOKEN},
                "tls_config": {"ca_file": api_metrics.CA},
                "static_configs": [{"targets": [f"{vip}:{port}"]}],
                # Only whether it answers matters: the API server's own series are Delta's job.
                "metric_relabel_configs": [{"source_labels": ["__name__"], "regex": ".+", "action": "drop"}],
            }
        )
    return jobs
