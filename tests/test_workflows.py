"""The GitHub workflows: valid against the GitHub workflow schema that check-jsonschema ships
(offline: no schema is downloaded), and doing what CI and the nightly build are for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
NIGHTLY = WORKFLOWS / "nightly.yml"


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
        *map(str, files),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def load(path: Path) -> dict[str, Any]:
    return YAML(typ="safe").load(path.read_text())


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    (job,) = workflow["jobs"].values()
    return job["steps"]


def test_workflows_match_the_github_workflow_schema() -> None:
    result = check_jsonschema(CI, NIGHTLY)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    """The check above can fail: a job without runs-on and a timeout that is not a number."""
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  ci:\n    timeout-minutes: ninety\n    steps:\n      - run: true\n")
    result = check_jsonschema(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "broken.yml" in result.stdout + result.stderr


@pytest.mark.parametrize("path", [CI, NIGHTLY], ids=["ci", "nightly"])
def test_jobs_run_as_root_in_debian_12_with_room_for_podman(path: Path) -> None:
    (job,) = load(path)["jobs"].values()
    assert job["timeout-minutes"] == 90
    container = job["container"]
    assert container["image"] == "debian:12"
    assert {"--privileged", "--cgroupns=host"} <= set(container["options"].split())
    assert any(volume.endswith(":/var/lib/containers") for volume in container["volumes"])


@pytest.mark.parametrize("path", [CI, NIGHTLY], ids=["ci", "nightly"])
def test_actions_are_pinned(path: Path) -> None:
    used = [step["uses"] for step in steps(load(path)) if "uses" in step]
    assert used, "no action used"
    for action in used:
        version = action.partition("@")[2]
        assert version.startswith("v") and version[1:].isdigit(), f"{action}: pin a major version"
    assert "actions/checkout@v4" in used


def test_ci_runs_ci_run_on_push_and_pull_request() -> None:
    workflow = load(CI)
    assert set(workflow["on"]) == {"push", "pull_request"}
    assert [step["run"] for step in steps(workflow) if step.get("name") == ".ci/run"] == [".ci/run"]


def test_nightly_runs_on_a_schedule_and_by_hand_and_keeps_its_reports() -> None:
    workflow = load(NIGHTLY)
    assert set(workflow["on"]) == {"schedule", "workflow_dispatch"}
    assert workflow["on"]["schedule"][0]["cron"]
    all_steps = steps(workflow)
    assert [step["run"] for step in all_steps if step.get("name") == ".ci/nightly"] == [".ci/nightly"]
    uploads = {
        step["with"]["path"]: step
        for step in all_steps
        if step.get("uses", "").startswith("actions/upload-artifact@")
    }
    assert set(uploads) == {"reports/allure-report", "reports/"}
    assert all(step["if"] == "always()" for step in uploads.values())
    assert all(step["uses"] == "actions/upload-artifact@v4" for step in uploads.values())
