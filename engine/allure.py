"""Allure results: labels from the plan, categories, environment, and a run summary entry.

allure-pytest 2.16.2 reads labels from ``allure_label`` markers at report time
(``allure_pytest.utils.allure_labels``: ``item.iter_markers("allure_label")``, the label
type in ``kwargs["label_type"]``), so markers added to the item at collection work;
epic/feature/story are not unique labels, so a test's own ``@allure.epic`` would add to
ours, not replace it - the engine adds a label only where the test has none of that type.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

from apply.redact import Redactor
from engine.contract import SkipKind, reason_pattern
from engine.outcome import RunOutcome, RunStatus

# First match wins in Allure; apply failures are exceptions other than AssertionError, so
# allure-pytest marks them "broken".
CATEGORIES = [
    {
        "name": "blocked",
        "matchedStatuses": ["skipped"],
        "messageRegex": reason_pattern(SkipKind.BLOCKED),
    },
    {
        "name": "waived",
        "matchedStatuses": ["skipped"],
        "messageRegex": reason_pattern(SkipKind.WAIVED),
    },
    {
        "name": "not applicable",
        "matchedStatuses": ["skipped"],
        "messageRegex": reason_pattern(SkipKind.NOT_APPLICABLE),
    },
    {
        "name": "not verified (check mode)",
        "matchedStatuses": ["skipped"],
        "messageRegex": reason_pattern(SkipKind.CHECK),
    },
    {
        "name": "apply failed",
        "matchedStatuses": ["broken", "failed"],
        "traceRegex": "(?s).*ApplyError.*",
    },
    {
        "name": "apply failed",
        "matchedStatuses": ["broken", "failed"],
        "messageRegex": "(?s).*ApplyError.*",
    },
    {
        "name": "verification failed",
        "matchedStatuses": ["failed"],
    },
]


# The run summary's status per run outcome. A run that is "not verified" (some team's every
# check was waived or not applicable, nothing failed) is "skipped": not a failure in Allure's
# statistics (the run exits 0), and shown as its waived checks are, not with the green tick
# of a run that verified every team. Its message names those teams.
SUMMARY_STATUS = {RunStatus.PASSED: "passed", RunStatus.NOT_VERIFIED: "skipped", RunStatus.FAILED: "failed"}


def add_plan_labels(item: pytest.Item, phase: int, team: str) -> None:
    """Epic = "Phase N", feature = "Team X", story = the test's task marker."""
    present = {mark.kwargs.get("label_type") for mark in item.iter_markers("allure_label")}
    wanted = {"epic": f"Phase {phase}", "feature": f"Team {team}"}
    task = item.get_closest_marker("task")
    if task is not None and task.args:
        wanted["story"] = str(task.args[0])
    for label_type, value in wanted.items():
        if label_type not in present:
            item.add_marker(pytest.mark.allure_label(value, label_type=label_type))


def forget_test(config: pytest.Config, item: pytest.Item) -> None:
    """Drop the result allure-pytest starts for every protocol run (its tryfirst
    ``pytest_runtest_protocol`` wrapper) so the hidden team boundary never shows as a test."""
    listener = config.pluginmanager.get_plugin("allure_listener")
    if listener is None:
        return
    test_uuid = listener._cache.pop(item.nodeid)
    if test_uuid:
        listener.allure_logger.drop_test(test_uuid)


def allure_dir(config: pytest.Config) -> Path | None:
    value = getattr(config.option, "allure_report_dir", None)
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else Path(config.invocation_params.dir, path)


def write_categories(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "categories.json").write_text(json.dumps(CATEGORIES, indent=1), encoding="utf-8")


def write_environment(directory: Path, environment: Mapping[str, str], redactor: Redactor) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for key, value in sorted(environment.items()):
        # .properties: one key=value per line; escape what would break the line.
        text = redactor.redact(str(value)).replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"{key.replace(' ', '_')}={text}")
    (directory / "environment.properties").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_summary(
    directory: Path,
    *,
    name: str,
    outcome: RunOutcome,
    attachments: Mapping[str, str],
    start: float,
    stop: float,
) -> Path:
    """A result entry for the run itself (epic "Run"): the run's outcome (`SUMMARY_STATUS`,
    its text as the message), with the timeline attached as Markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    entry_uuid = str(uuid.uuid4())
    files = []
    for title, text in attachments.items():
        source = f"{uuid.uuid4()}-attachment.md"
        (directory / source).write_text(text, encoding="utf-8")
        files.append({"name": title, "source": source, "type": "text/markdown"})
    result = {
        "uuid": entry_uuid,
        "historyId": "hvsuite-engine-run-summary",
        "testCaseId": "hvsuite-engine-run-summary",
        "name": name,
        "fullName": "engine.run_summary",
        "status": SUMMARY_STATUS[outcome.status],
        "statusDetails": {"message": outcome.text},
        "stage": "finished",
        "start": int(start * 1000),
        "stop": int((stop or time.time()) * 1000),
        "labels": [
            {"name": "epic", "value": "Run"},
            {"name": "feature", "value": "Timeline"},
            {"name": "framework", "value": "pytest"},
        ],
        "attachments": files,
    }
    path = directory / f"{entry_uuid}-result.json"
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return path
