"""Not-applicable checks (`engine.not_applicable`) beside plain skips and waivers, and the
run's one outcome (`engine.outcome`) in every channel: exit status, terminal summary,
timeline, signals and the Allure run summary."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from synthetic import run, signals, sleeper, timeline, write_suite

from engine import contract
from engine.contract import SkipKind
from engine.outcome import RunStatus, run_outcome
from engine.plan import plan_from_data
from engine.run import TeamRun
from engine.state import Verdict

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("engine_env")

CHAIN = {"Alpha": (1, []), "Bravo": (2, ["Alpha"])}
CLIENT_AUTH = "alpha.tls.client_auth is off: no client certificate is issued"
NOT_APPLICABLE = contract.not_applicable_reason(CLIENT_AUTH)


def alpha_module(*, skip: str) -> str:
    """Alpha: one check that passes, one that `skip` ends ("not applicable" or "plain")."""
    call = 'pytest.skip("no network")' if skip == "plain" else f"engine.not_applicable({CLIENT_AUTH!r})"
    return "\n".join(
        [
            "import pytest",
            "import engine",
            "",
            "@engine.task('Main task')",
            "def test_certificates():",
            "    pass",
            "",
            "@engine.task('Main task')",
            "def test_client_auth():",
            f"    {call}",
            "    raise AssertionError('not reached')",
            "",
        ]
    )


def allure_results(pytester: pytest.Pytester) -> dict[str, dict[str, Any]]:
    paths = (pytester.path / "allure-results").glob("*-result.json")
    return {result["fullName"]: result for result in (json.loads(p.read_text()) for p in paths)}


def first_category(pytester: pytest.Pytester, result: dict[str, Any]) -> str | None:
    """The Allure category a result falls in (the first whose status and message match)."""
    categories = json.loads((pytester.path / "allure-results" / "categories.json").read_text())
    message = result["statusDetails"]["message"]
    for category in categories:
        if result["status"] in category["matchedStatuses"] and re.fullmatch(
            category.get("messageRegex", "(?s).*"), message
        ):
            return category["name"]
    return None


def run_document(pytester: pytest.Pytester) -> dict[str, Any]:
    return json.loads((pytester.path / "reports" / "timeline.json").read_text())


@pytest.mark.parametrize("xdist", [("-p", "no:xdist"), ("-n", "2")], ids=["no-xdist", "n2"])
def test_a_not_applicable_check_leaves_its_team_green_and_is_reported_by_name(
    pytester: pytest.Pytester, xdist: tuple[str, str]
) -> None:
    write_suite(pytester, CHAIN, {"Alpha": alpha_module(skip="not applicable"), "Bravo": sleeper("Bravo")})
    result = run(pytester, *xdist, "--alluredir", "allure-results")
    assert result.ret == 0, result.stdout.str()
    # Its own outcome in pytest's counts, not "skipped" (and not "waived"); two words, which
    # pytester's parseoutcomes cannot read.
    result.stdout.fnmatch_lines(["=* 3 passed, 1 not applicable in *"])
    # Green, and its dependent ran.
    teams = timeline(pytester)
    assert {name: (entry["outcome"], entry["verified"]) for name, entry in teams.items()} == {
        "Alpha": ("green", True),
        "Bravo": ("green", True),
    }
    issue = f"{NOT_APPLICABLE} (test_client_auth)"
    assert teams["Alpha"]["issues"] == [issue]
    assert teams["Alpha"]["not_applicable"] == [f"test_alpha.py::test_client_auth: {NOT_APPLICABLE}"]
    assert teams["Alpha"]["waived"] == []
    alpha = next(signal for signal in signals(pytester) if signal["team"] == "Alpha")
    assert alpha["verdict"] == "green"
    assert alpha["text"].splitlines()[3:] == [f"Issues: {issue}", "Next Teams Can Start: Team Bravo"]
    listed = [
        "not applicable (1; skipped because a config choice makes them irrelevant):",
        f"  NOT APPLICABLE test_alpha.py::test_client_auth: {NOT_APPLICABLE}",
    ]
    result.stdout.fnmatch_lines(listed)
    result.stdout.fnmatch_lines(
        ["teams: 2 green, 0 waived, 0 failed, 0 blocked, 0 not implemented", "run passed: *"]
    )
    markdown = (pytester.path / "reports" / "timeline.md").read_text().splitlines()
    assert f"- NOT APPLICABLE test_alpha.py::test_client_auth: {NOT_APPLICABLE}" in markdown
    # Allure: a skipped result in the category "not applicable"; the run summary passed.
    results = allure_results(pytester)
    skipped = results["test_alpha#test_client_auth"]
    assert skipped["status"] == "skipped"
    assert first_category(pytester, skipped) == "not applicable"
    assert results["engine.run_summary"]["status"] == "passed"
    assert run_document(pytester)["outcome"]["status"] == "passed"


def test_the_progress_line_shows_a_not_applicable_check_as_n(pytester: pytest.Pytester) -> None:
    write_suite(pytester, {"Alpha": (1, [])}, {"Alpha": alpha_module(skip="not applicable")})
    result = run(pytester, "-p", "no:xdist")
    result.stdout.fnmatch_lines(["test_alpha.py .n*"])
    verbose = run(pytester, "-p", "no:xdist", "-v")
    verbose.stdout.fnmatch_lines(["test_alpha.py::test_client_auth NOT APPLICABLE*"])


@pytest.mark.parametrize("xdist", [("-p", "no:xdist"), ("-n", "2")], ids=["no-xdist", "n2"])
def test_a_plain_skip_fails_the_team_blocks_its_dependents_and_the_run(
    pytester: pytest.Pytester, xdist: tuple[str, str]
) -> None:
    write_suite(pytester, CHAIN, {"Alpha": alpha_module(skip="plain"), "Bravo": sleeper("Bravo")})
    result = run(pytester, *xdist, "--alluredir", "allure-results")
    # No test failed, yet a team did: the exit status says so like every report.
    assert result.parseoutcomes() == {"passed": 1, "skipped": 3}
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    teams = timeline(pytester)
    assert {name: entry["outcome"] for name, entry in teams.items()} == {
        "Alpha": "failed",
        "Bravo": "blocked",
    }
    assert teams["Alpha"]["issues"] == ["test_alpha.py::test_client_auth (skipped: no network)"]
    assert teams["Bravo"]["blocked_by"] == "Team Alpha (test_alpha.py::test_client_auth)"
    assert not (pytester.path / "stamps.jsonl").exists()  # Bravo never ran
    text = "run failed: Team Alpha (failed), Team Bravo (blocked)"
    result.stdout.fnmatch_lines([text])
    assert run_document(pytester)["outcome"] == {"status": "failed", "text": text}
    assert (pytester.path / "reports" / "timeline.md").read_text().splitlines()[-1] == text
    summary = allure_results(pytester)["engine.run_summary"]
    assert summary["status"] == "failed" and summary["statusDetails"]["message"] == text


def test_a_team_whose_every_check_is_not_applicable_is_not_verified(pytester: pytest.Pytester) -> None:
    module = "\n".join(
        [
            "import engine",
            "",
            "def test_client_auth():",
            f"    engine.not_applicable({CLIENT_AUTH!r})",
            "",
            "def test_client_revocation():",
            f"    engine.not_applicable({CLIENT_AUTH!r})",
            "",
        ]
    )
    write_suite(pytester, CHAIN, {"Alpha": module, "Bravo": sleeper("Bravo")})
    result = run(pytester, "-p", "no:xdist", "--alluredir", "allure-results")
    assert result.ret == 0, result.stdout.str()
    teams = timeline(pytester)
    assert {name: (entry["outcome"], entry["verified"]) for name, entry in teams.items()} == {
        "Alpha": ("not applicable", False),
        "Bravo": ("green", True),
    }
    alpha = next(signal for signal in signals(pytester) if signal["team"] == "Alpha")
    assert alpha["text"].splitlines()[0] == "⚪ ALPHA NOT APPLICABLE"
    assert alpha["issues"] == [
        "not verified: every check was not applicable",
        f"{NOT_APPLICABLE} (test_client_auth, test_client_revocation)",
    ]
    result.stdout.fnmatch_lines(
        [
            "| Alpha | 1 | not applicable (not verified) |*",
            "teams: 1 green, 0 waived, 0 failed, 0 blocked, 0 not implemented, "
            "1 not applicable (not verified)",
            "run not verified: Team Alpha (not applicable); no team failed",
        ]
    )
    recorded = json.loads((pytester.path / "reports" / "state" / "default.json").read_text())["teams"]
    assert recorded["Alpha"]["verdict"] == "not applicable"
    assert allure_results(pytester)["engine.run_summary"]["status"] == "skipped"


def test_the_not_applicable_reason_is_its_own_skip_kind() -> None:
    assert contract.skip_kind(NOT_APPLICABLE) is SkipKind.NOT_APPLICABLE
    assert re.fullmatch(contract.reason_pattern(SkipKind.NOT_APPLICABLE), f"Skipped: {NOT_APPLICABLE}")
    assert not re.fullmatch(contract.reason_pattern(SkipKind.NOT_APPLICABLE), "Skipped: no network")
    with pytest.raises(pytest.skip.Exception, match=f"^{re.escape(NOT_APPLICABLE)}$"):
        contract.not_applicable(CLIENT_AUTH)


# -- verdicts and the run outcome with fake reports -----------------------------------------

PLAN = plan_from_data(
    {
        "team": [
            {"name": "A", "phase": 1, "requires": [], "hours": [1, 1], "module": "test_a.py"},
            {"name": "B", "phase": 2, "requires": ["A"], "hours": [1, 1], "module": "test_b.py"},
            {"name": "C", "phase": 3, "requires": [], "hours": [1, 1], "module": "test_c.py"},
        ]
    },
    Path("."),
)
MODULES = {team.name: team.module for team in PLAN.teams}
KVM = contract.waiver_reason("kvm", "scratch")


class Report:
    def __init__(self, nodeid: str, when: str, outcome: str = "passed", reason: str = "") -> None:
        self.nodeid, self.when, self.outcome = nodeid, when, outcome
        self.longrepr = ("x", 1, f"Skipped: {reason}") if reason else None
        self.user_properties: list[tuple[str, Any]] = []


def team_run(outcomes: dict[str, str], implemented: set[str] | None = None) -> TeamRun:
    """`outcomes`: node id -> "passed", "failed" or a skip reason of its call phase."""
    run = TeamRun(PLAN, list(outcomes), MODULES, implemented if implemented is not None else set(MODULES))
    for nodeid, outcome in outcomes.items():
        run.add_report(Report(nodeid, "setup"))
        if outcome in ("passed", "failed"):
            run.add_report(Report(nodeid, "call", outcome))
        else:
            run.add_report(Report(nodeid, "call", "skipped", outcome))
        run.add_report(Report(nodeid, "teardown"))
    return run


@pytest.mark.parametrize(
    ("outcomes", "verdict"),
    [
        (("passed", NOT_APPLICABLE, KVM), Verdict.GREEN),
        ((NOT_APPLICABLE, NOT_APPLICABLE), Verdict.NOT_APPLICABLE),
        ((NOT_APPLICABLE, KVM), Verdict.WAIVED),
        (("passed", "no network"), Verdict.FAILED),
    ],
    ids=["pass-na-waived", "all-na", "na-and-waived", "plain-skip"],
)
def test_team_verdicts_with_not_applicable_checks(outcomes: tuple[str, ...], verdict: Verdict) -> None:
    run = team_run({f"test_a.py::test_{index}": outcome for index, outcome in enumerate(outcomes)})
    assert run.teams["A"].verdict is verdict
    assert run.ready("B") is verdict.unblocks


def test_a_team_of_waived_and_not_applicable_checks_says_both() -> None:
    run = team_run({"test_a.py::test_1": NOT_APPLICABLE, "test_a.py::test_2": KVM})
    assert run.teams["A"].issues == [
        "not verified: every check was waived or not applicable",
        f"1 check(s) {KVM}",
        f"{NOT_APPLICABLE} (test_1)",
    ]


@pytest.mark.parametrize(
    ("a", "exitstatus", "status", "text"),
    [
        ("passed", 0, RunStatus.PASSED, "run passed: every collected team is green"),
        (KVM, 0, RunStatus.NOT_VERIFIED, "run not verified: Team A (waived); no team failed"),
        ("failed", 1, RunStatus.FAILED, "run failed: Team A (failed), Team B (blocked)"),
        # A failure pytest counts outside the plan's teams fails the run too.
        ("passed", 1, RunStatus.FAILED, "run failed: pytest exit status 1 (tests failed)"),
        (
            KVM,
            2,
            RunStatus.FAILED,
            "run failed: pytest exit status 2 (interrupted); not verified: Team A (waived)",
        ),
    ],
    ids=["green", "waived", "failed", "outside", "interrupted"],
)
def test_the_run_outcome(a: str, exitstatus: int, status: RunStatus, text: str) -> None:
    run = team_run({"test_a.py::test_1": a, "test_b.py::test_1": "passed"})
    outcome = run_outcome(run, exitstatus, check_mode=False)
    assert (outcome.status, outcome.text) == (status, text)
    assert outcome.failed is (status is RunStatus.FAILED)


def test_teams_not_collected_do_not_count_but_what_they_block_does() -> None:
    # C is not implemented; nothing needs it: the run passed.
    run = team_run({"test_a.py::test_1": "passed", "test_b.py::test_1": "passed"}, {"A", "B"})
    assert run.teams["C"].verdict is Verdict.NOT_IMPLEMENTED
    assert run_outcome(run, 0, check_mode=False).status is RunStatus.PASSED


def test_a_notice_is_listed_with_the_issues_of_a_green_team(pytester: pytest.Pytester) -> None:
    body = "\n".join(
        [
            "import pytest",
            "",
            "@pytest.mark.task('Main task')",
            "def test_volumes(notice):",
            "    notice('pv-0 is Released: it holds the data of deleted claim apps/data')",
            "    notice('pv-0 is Released: it holds the data of deleted claim apps/data')",
            "",
        ]
    )
    write_suite(pytester, {"Alpha": (1, [])}, {"Alpha": body})
    result = run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*ALPHA COMPLETE*", "*noticed: pv-0 is Released: it holds the data of*"])
    assert timeline(pytester)["Alpha"]["outcome"] == "green"
    assert [line for line in result.stdout.lines if "noticed:" in line] == [
        "Issues: noticed: pv-0 is Released: it holds the data of deleted claim apps/data"
    ]
