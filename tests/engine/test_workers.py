"""``-n auto`` gives the plan's widest phase a worker per team, whatever the CPU count."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine import plugin

ROOT = Path(__file__).resolve().parents[2]


def _config(plan: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        rootpath=ROOT,
        getoption=lambda name: plan if name == "engine_plan" else None,
        getini=lambda name: "phases/plan.toml",
    )


def test_auto_workers_cover_the_widest_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    # Phases 5 and 6 have three teams each.
    assert plugin.pytest_xdist_auto_num_workers(_config()) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert plugin.pytest_xdist_auto_num_workers(_config()) == 8


def test_the_environment_and_a_missing_plan_leave_the_count_to_xdist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "5")
    assert plugin.pytest_xdist_auto_num_workers(_config()) is None
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS")
    assert plugin.pytest_xdist_auto_num_workers(_config("/nonexistent/plan.toml")) is None
