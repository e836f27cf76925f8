"""The hypervisor suite's engine: the plan as a dependency graph of teams, run under pytest
(and pytest-xdist) in that order, with completion signals, a timeline and Allure labels.

The small API for test modules and other plugins:

- `task`: ``@engine.task("Firewall")`` marks the plan task a check belongs to (Allure story).
- `not_applicable(reason)`: skip the running check because a valid config choice makes it
  irrelevant (``engine.not_applicable("alpha.tls.client_auth is off")``); reported as "not
  applicable", which, unlike a plain ``pytest.skip``, does not fail the team.
- the `notice` fixture: ``notice("hvsuite-pv-0 is Released: ...")`` names something the
  platform's users made that a check found and left alone; it is listed with the team's
  issues ("noticed: ...") and in Allure, and never fails the team.
- `add_environment(config, key, value)`: a line in Allure's environment.properties.
- `set_target_name(config, name)`: the target team verdicts are recorded for (--resume).
- `set_signal_webhook(config, url, timeout)`: the chat webhook for completion signals.
- `teams_to_run(config)`: the implemented teams this run may execute (their roles decide
  which hosts a run needs).
- `start_background(config, label, fn)`: run ``fn()`` in a daemon thread of the controller
  (from its pytest_configure/pytest_sessionstart); the timeline shows it with its outcome and
  how long it overlapped the teams (`engine.background`).

The contract with the targets plugin and the phase modules (run modes, skip reasons, apply
fixtures, change counts) is `engine.contract`; the engine owns ``--check`` and
``--verify-only`` and sets the mode (`engine.contract.mode`) in its pytest_configure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import contract
from engine.background import start as start_background
from engine.config import ENVIRONMENT_KEY, TARGET_KEY, WEBHOOK_KEY
from engine.plan import Team

task = pytest.mark.task
not_applicable = contract.not_applicable
# A team's apply fixture (module-scoped; the only fixture of a team set up under --check).
apply_fixture = contract.apply_fixture


def add_environment(config: pytest.Config, key: str, value: object) -> None:
    """Add ``key=value`` to Allure's environment.properties. Only the controller writes the
    file; values added on xdist workers reach it with the worker's output at the end."""
    config.stash.setdefault(ENVIRONMENT_KEY, {})[str(key)] = str(value)


def set_target_name(config: pytest.Config, name: str) -> None:
    """Name the target (e.g. "scratch:hvs-scratch", "ssh:hetzner1") team verdicts are
    recorded for in reports/state/; call it in pytest_configure."""
    config.stash[TARGET_KEY] = name


def set_signal_webhook(config: pytest.Config, url: str | None, timeout: float = 5.0) -> None:
    """Post completion signals to `url` (used when --signal-webhook / the ini option is unset)."""
    if url:
        config.stash[WEBHOOK_KEY] = (url, timeout)


def teams_to_run(config: pytest.Config) -> list[Team]:
    """The implemented teams this run may execute (empty when no plan is loaded)."""
    from engine.plugin import SETTINGS_KEY

    settings = config.stash.get(SETTINGS_KEY, None)
    return settings.teams_to_run() if settings is not None else []


def reports_dir(config: pytest.Config) -> Path:
    """Where this run's reports go (--reports-dir, else the ini option reports_dir): a team
    writes its own there (a table, a chart, a runbook) beside the signals and the timeline."""
    from engine.plugin import SETTINGS_KEY

    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        raise RuntimeError("the engine plugin is not configured: no reports directory")
    return settings.reports_dir


__all__ = [
    "add_environment",
    "apply_fixture",
    "not_applicable",
    "reports_dir",
    "set_signal_webhook",
    "set_target_name",
    "start_background",
    "task",
    "teams_to_run",
]
