"""Idempotence of Base + Alpha on a fresh scratch server (Molecule's idempotence idea):
the first run changes the host, the second run on the same server changes nothing.

Slow (minutes) and needs podman: runs only with HVSUITE_E2E=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTEST = ROOT / ".venv" / "bin" / "pytest"
RUN_TIMEOUT = 900

pytestmark = pytest.mark.skipif(os.environ.get("HVSUITE_E2E") != "1", reason="set HVSUITE_E2E=1 to run")


def _run(name: str, reports: Path) -> dict[str, int]:
    command = [
        str(PYTEST), "-p", "no:cacheprovider", "phases/test_p0_base.py", "phases/test_p1_alpha.py",
        "-n", "2", "--target", f"scratch:{name}", "--reports-dir", str(reports), "-q",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    timeline = json.loads((reports / "timeline.json").read_text())
    return {team["team"]: team["changes"] for team in timeline["teams"] if team["team"] in ("Base", "Alpha")}


def test_second_run_of_base_and_alpha_changes_nothing(tmp_path: Path) -> None:
    name = f"hvs-idem-{uuid.uuid4().hex[:8]}"
    try:
        first = _run(name, tmp_path / "first")
        second = _run(name, tmp_path / "second")
    finally:
        # The run also created the fail2ban check's second server, "<name>-probe".
        for server in (name, f"{name}-probe"):
            subprocess.run(
                [sys.executable, "-m", "targets", "destroy", server],
                cwd=ROOT,
                capture_output=True,
                timeout=120,
                check=False,
            )
    assert first["Alpha"] > 0, first
    assert second == {"Base": 0, "Alpha": 0}, second
