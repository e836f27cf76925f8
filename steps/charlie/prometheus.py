"""Team Charlie: Prometheus and node_exporter from the OS archive, on the declared ports.

Order matters on a host where flintlock already serves gRPC on 9090 (Prometheus' default):
the systemd drop-ins that move Prometheus to its declared port are written *before* the
package is installed, so the package's own first start already uses them. They also point it
at the suite's config file and make its existence a start condition, so Prometheus never runs
on the package's default config (which scrapes a second "node" target). The scrape config
is checked with ``promtool check config`` before it replaces the live one; a config change
reloads Prometheus, a flag change restarts it. The admin API (``--web.enable-admin-api``) is
on only when a later team asks for it (`steps.charlie.hookspecs.prometheus_admin_api`).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apply import ops
from apply.api import Context, step
from apply.extensions import hooks
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


def dropin_path(unit: str) -> str:
    return f"/etc/systemd/system/{unit}.service.d/hvsuite.conf"


@dataclass(frozen=True)
class Contributions:
    """What later teams add to the config (`steps.charlie.hookspecs`)."""

    scrape_jobs: tuple[dict[str, Any], ...] = ()
    rule_files: tuple[str, ...] = ()
    alertmanagers: tuple[dict[str, Any], ...] = ()

    @classmethod
    def collect(cls, ctx: Context) -> Contributions:
        def flat(results: list[list[Any]]) -> tuple[Any, ...]:
            return tuple(item for result in results for item in result)

        return cls(
            scrape_jobs=flat(hooks().prometheus_scrape_jobs(ctx=ctx)),
            rule_files=flat(hooks().prometheus_rule_files(ctx=ctx)),
            alertmanagers=flat(hooks().prometheus_alertmanagers(ctx=ctx)),
        )


def _yaml(items: list[Any]) -> str:
    """``items`` as a YAML list indented under a top-level key ("" for none)."""
    return textwrap.indent(yaml.safe_dump(items, sort_keys=False), "  ") if items else ""


def render_config(
    charlie: CharlieSettings,
    *,
    prometheus_port: int,
    node_exporter_port: int,
    hostname: str,
    contributed: Contributions | None = None,
) -> str:
    contributed = contributed or Contributions()
    return ops.render(
        TEMPLATES / "prometheus.yml.j2",
        {
            "scrape_interval": charlie.scrape_interval,
            "evaluation_interval": charlie.evaluation_interval,
            "external_labels": charlie.external_labels,
            "prometheus_port": prometheus_port,
            "node_exporter_port": node_exporter_port,
            "hostname": hostname,
            "extra_jobs": _yaml(sorted(contributed.scrape_jobs, key=lambda job: job["job_name"])),
            "rule_files": _yaml(sorted(contributed.rule_files)),
            "alertmanagers": _yaml(list(contributed.alertmanagers)),
        },
    )


def scrape_config(ctx: Context) -> OpResult:
    """The config from the settings, the host's hostname and what later teams contribute
    (scrape jobs, rule files, Alertmanagers), checked by promtool."""
    host, settings = ctx.host, ctx.settings
    hostname = host.run("hostname").stdout.strip()
    return ops.file(
        host,
        CONFIG_PATH,
        render_config(
            settings.charlie,
            prometheus_port=settings.port("Charlie", "prometheus"),
            node_exporter_port=settings.port("Charlie", "node-exporter"),
            hostname=hostname,
            contributed=Contributions.collect(ctx),
        ),
        validate=VALIDATE,
    )


def admin_api_enabled(settings: object) -> bool:
    """Whether some team asked for the admin API (`prometheus_admin_api`)."""
    return any(hooks().prometheus_admin_api(settings=settings))


def render_service_dropin(charlie: CharlieSettings, *, prometheus_port: int, admin_api: bool) -> str:
    """Prometheus' systemd drop-in: the suite's config, its port, storage and flags."""
    return ops.render(
        TEMPLATES / "prometheus.service.conf.j2",
        {
            "config_path": CONFIG_PATH,
            "listen": f"0.0.0.0:{prometheus_port}",
            "storage_path": STORAGE_PATH,
            "retention": charlie.retention,
            "admin_api": admin_api,
        },
    )


def service_dropin(ctx: Context) -> OpResult:
    settings = ctx.settings
    return ops.file(
        ctx.host,
        dropin_path(PROMETHEUS),
        render_service_dropin(
            settings.charlie,
            prometheus_port=settings.port("Charlie", "prometheus"),
            admin_api=admin_api_enabled(settings),
        ),
    )


def refresh_flags(ctx: Context) -> None:
    """Re-render Prometheus' drop-in after a contributing team changed what its flags depend
    on (the admin API), and restart Prometheus if it changed. For a host where Charlie
    installed Prometheus: the caller checks that first."""
    dropin = service_dropin(ctx)
    ops.daemon_reload(ctx.host, force=dropin.changed)
    ops.service(ctx.host, PROMETHEUS, enabled=True, running=True, restart=dropin.changed)


def reconfigure(ctx: Context) -> None:
    """Re-render the config after a contributing team changed what its contribution reads, and
    reload Prometheus if the config changed. For a host where Charlie installed Prometheus:
    the caller, which must know that before it writes its contribution's files, checks."""
    config = scrape_config(ctx)
    ops.service(ctx.host, PROMETHEUS, enabled=True, running=True, reload=config.changed)


@step("Prometheus and node_exporter")
def apply(ctx: Context) -> None:
    """Prometheus and node_exporter installed, configured and serving."""
    host, settings = ctx.host, ctx.settings
    charlie = settings.charlie
    node_exporter_port = settings.port("Charlie", "node-exporter")
    with host.step("Prometheus and node_exporter"):
        with host.step("systemd drop-ins before the packages' first start") as flags:
            for unit in (PROMETHEUS, NODE_EXPORTER):
                ops.directory(host, f"/etc/systemd/system/{unit}.service.d")
            service_dropin(ctx)
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
