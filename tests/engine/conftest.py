"""Helpers for the engine's own tests: synthetic suites run with pytester in a subprocess."""

from __future__ import annotations

import pytest
from synthetic import ENGINE_ROOT


@pytest.fixture
def engine_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Subprocess runs import the engine from this checkout, with no project conftest."""
    monkeypatch.setenv("PYTHONPATH", str(ENGINE_ROOT))
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
