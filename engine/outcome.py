"""The run's outcome, decided once (`run_outcome`) and shown the same way in every channel:
the exit status, the terminal summary, timeline.json/timeline.md and the Allure run summary.

- passed: every collected team is green (checked, in a dry run);
- not verified: nothing failed, but some team verified nothing (every check of it was
  waived or not applicable). Not a failure: the run exits 0; every channel names the teams;
- failed: a collected team failed, was blocked or did not run, or pytest itself failed the
  session (e.g. a test outside the plan's teams): the run exits non-zero.

Teams that were not collected (not implemented, not selected, recorded green) do not count:
a collected team they hold back is blocked, and that counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pytest

from engine import checkreport
from engine.run import TeamRun
from engine.state import Verdict

FAILING = (Verdict.FAILED, Verdict.BLOCKED, Verdict.NOT_RUN)
# pytest's exit statuses that are no failure of the session.
_PYTEST_OK = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)


class RunStatus(StrEnum):
    PASSED = "passed"
    NOT_VERIFIED = "not verified"
    FAILED = "failed"


@dataclass(frozen=True)
class RunOutcome:
    status: RunStatus
    detail: str

    @property
    def failed(self) -> bool:
        return self.status is RunStatus.FAILED

    @property
    def text(self) -> str:
        """One line: "run passed: ...", "run not verified: ...", "run failed: ..."."""
        return f"run {self.status.value}: {self.detail}"


def run_outcome(run: TeamRun, exitstatus: int, *, check_mode: bool) -> RunOutcome:
    """The run's outcome from the collected teams' verdicts and pytest's exit status."""
    verdicts = {name: run.teams[name].verdict for name in run.collected_teams()}
    failing = [f"Team {name} ({verdict.value})" for name, verdict in verdicts.items() if verdict in FAILING]
    unverified = [
        f"Team {name} ({verdict.value})" for name, verdict in verdicts.items() if verdict.not_verified
    ]
    if exitstatus not in _PYTEST_OK and not failing:
        failing.append(f"pytest exit status {_exit_name(exitstatus)}")
    if failing:
        also = f"; not verified: {', '.join(unverified)}" if unverified else ""
        return RunOutcome(RunStatus.FAILED, ", ".join(failing) + also)
    if unverified:
        return RunOutcome(RunStatus.NOT_VERIFIED, f"{', '.join(unverified)}; no team failed")
    if check_mode:
        return RunOutcome(RunStatus.PASSED, checkreport.summary_line(run))
    return RunOutcome(RunStatus.PASSED, "every collected team is green")


def _exit_name(exitstatus: int) -> str:
    try:
        return f"{int(exitstatus)} ({pytest.ExitCode(exitstatus).name.lower().replace('_', ' ')})"
    except ValueError:  # pytest.exit(returncode=...) may use any number
        return str(int(exitstatus))
