"""Team Charlie-2's contributions to Team Charlie's Prometheus (steps/charlie/hookspecs.py):
its rule files, its Alertmanager and its scrape jobs, once its rule files are on the host, so
Charlie's own runs render the same config as this team's. Before that each answers None, which
pluggy leaves out of the results (other teams' contributions are then all there is)."""

from __future__ import annotations

from typing import Any

from apply.api import Context
from apply.extensions import hookimpl
from steps.charlie2 import alerting


@hookimpl
def prometheus_rule_files(ctx: Context) -> list[str] | None:
    return alerting.rule_paths() if alerting.installed(ctx) else None


@hookimpl
def prometheus_alertmanagers(ctx: Context) -> list[dict[str, Any]] | None:
    if not alerting.installed(ctx):
        return None
    return [{"static_configs": [{"targets": [alerting.alertmanager_address(ctx.settings)]}]}]


@hookimpl
def prometheus_scrape_jobs(ctx: Context) -> list[dict[str, Any]] | None:
    return alerting.scrape_jobs(ctx) if alerting.installed(ctx) else None
