"""Team Charlie's extension points: what later teams contribute to its Prometheus."""

from __future__ import annotations

from typing import Any

from apply.api import Context
from apply.extensions import hookspec


@hookspec
def prometheus_scrape_jobs(ctx: Context) -> list[dict[str, Any]]:
    """Scrape jobs (entries of Prometheus' ``scrape_configs``) a later team adds to the
    Prometheus on ``ctx.host``. Read from what that team has set up on the host, so a job
    appears once its target and credentials exist, and Charlie's own runs render the same
    config as the contributing team's. A team that changes what its job reads calls
    `steps.charlie.prometheus.reconfigure`."""


@hookspec
def prometheus_rule_files(ctx: Context) -> list[str]:
    """Paths of rule files on ``ctx.host`` (recording and alerting rules) Prometheus loads;
    the contributing team installs them (promtool checks the config that names them)."""


@hookspec
def prometheus_alertmanagers(ctx: Context) -> list[dict[str, Any]]:
    """Entries of ``alerting.alertmanagers``: where Prometheus sends its alerts."""


@hookspec
def prometheus_admin_api(settings: object) -> bool:
    """Whether Prometheus serves its admin API (``--web.enable-admin-api``: TSDB snapshots,
    series deletion), which a later team needs, e.g. for backups. Off unless some team answers
    True. Its port stays admin-only, as every metrics port. A team that turns it on for a host
    where Prometheus already runs calls `steps.charlie.prometheus.refresh_flags`."""
