"""A dry run (--check) seen by the engine: checks skipped as "check mode: ..." are not
failures, teams end "checked" (unblocking their dependents, never recorded green), and the
controller prints and writes the would-change ops the reports carry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic import run, signals, timeline, write_suite

from engine.plan import plan_from_data
from engine.run import TeamRun
from engine.state import Verdict

pytest_plugins = ["pytester"]

CHAIN = {"Alpha": (1, []), "Bravo": (2, ["Alpha"]), "Charlie": (2, ["Alpha"]), "Delta": (3, ["Bravo"])}

# What the targets plugin does under --check, reduced to the engine's contract: the run is
# marked as a dry run, each report carries its would-change ops, every check is skipped.
CHECK_CONFTEST = """
import pytest
import engine

DIFF = "--- a/etc/x\\n+++ b/etc/x\\n" + "".join(f"+line {n}\\n" for n in range(40))

def pytest_configure(config):
    engine.set_check_mode(config)

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    team = item.module.__name__.removeprefix("test_")
    if call.when == "setup" and item.name == "test_1" and team != "charlie":
        ops = [{"op": f"[hvs] => file /etc/{team}.conf", "diff": DIFF},
               {"op": f"[hvs] => service {team}", "diff": None}]
        report.user_properties.append(("hvs_would_change", ops))
    return report
"""


def check_body(team: str, *, fail: bool = False) -> str:
    lines = ["import pytest", ""]
    for index in (1, 2):
        lines += [
            '@pytest.mark.task("Main task")',
            f"def test_{index}():",
            (
                f"    raise AssertionError('{team} apply failed')"
                if fail and index == 1
                else "    pytest.skip('check mode: not verified, nothing was applied')"
            ),
            "",
        ]
    return "\n".join(lines)


def check_suite(pytester: pytest.Pytester, failing: str | None = None) -> None:
    write_suite(pytester, CHAIN, {name: check_body(name, fail=name == failing) for name in CHAIN})
    pytester.makeconftest(CHECK_CONFTEST)


@pytest.mark.parametrize("xdist", [("-p", "no:xdist"), ("-n", "2")], ids=["no-xdist", "n2"])
def test_check_mode_skips_are_not_failures_and_teams_are_checked(
    pytester: pytest.Pytester, engine_env: None, xdist: tuple[str, str]
) -> None:
    check_suite(pytester)
    # An earlier real run recorded Alpha green: a dry run must not overwrite it.
    state = pytester.path / "reports" / "state" / "default.json"
    state.parent.mkdir(parents=True)
    state.write_text(
        json.dumps({"target": "default", "teams": {"Alpha": {"verdict": "green", "at": "then"}}})
    )
    result = run(pytester, *xdist, "-rs")
    assert result.ret == 0, result.stdout.str()
    assert result.parseoutcomes().get("checked") == 8
    assert {name: entry["outcome"] for name, entry in timeline(pytester).items()} == dict.fromkeys(
        CHAIN, "checked"
    )
    heads = sorted(signal["text"].splitlines()[0] for signal in signals(pytester))
    assert heads == [f"🔎 {name.upper()} CHECKED" for name in sorted(CHAIN)]
    assert all(signal["verdict"] == "checked" for signal in signals(pytester))
    recorded = json.loads(state.read_text())["teams"]
    assert recorded == {"Alpha": {"verdict": "green", "at": "then", "first_failure": None}}
    out = result.stdout.str()
    assert "blocked" not in out
    result.stdout.fnmatch_lines(
        [
            "*- would change (check mode) -*",
            "Team Alpha (checked): 2 op(s) would change",
            "  ~ [[]hvs] => file /etc/alpha.conf",
            "      +++ b/etc/x",
            "      … 22 more line(s): see *check.md",
            "  ~ [[]hvs] => service alpha",
            "Team Bravo (checked): 2 op(s) would change",
            "Team Charlie (checked): 0 op(s) would change",
            "Team Delta (checked): 2 op(s) would change",
            "check mode: 6 op(s) would change in 3 team(s); nothing was applied or verified",
        ]
    )
    document = json.loads((pytester.path / "reports" / "check.json").read_text())
    assert document["total"] == 6
    alpha = document["teams"][0]
    assert alpha["team"] == "Alpha" and alpha["outcome"] == "checked"
    assert alpha["would_change"][0]["diff"].count("+line") == 40
    markdown = (pytester.path / "reports" / "check.md").read_text()
    assert "+line 39" in markdown and "## Team Delta (checked): 2 op(s)" in markdown


def test_a_failure_in_check_mode_still_blocks_and_fails(pytester: pytest.Pytester, engine_env: None) -> None:
    check_suite(pytester, failing="Bravo")
    result = run(pytester, "-p", "no:xdist")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = {name: entry["outcome"] for name, entry in timeline(pytester).items()}
    assert outcomes == {"Alpha": "checked", "Bravo": "failed", "Charlie": "checked", "Delta": "blocked"}
    recorded = json.loads((pytester.path / "reports" / "state" / "default.json").read_text())["teams"]
    assert {name: entry["verdict"] for name, entry in recorded.items()} == {
        "Bravo": "failed",
        "Delta": "blocked",
    }


def test_team_run_counts_check_mode_skips_as_non_failing() -> None:
    plan = plan_from_data(
        {
            "team": [
                {"name": "A", "phase": 1, "requires": [], "hours": [1, 1], "module": "test_a.py"},
                {"name": "B", "phase": 2, "requires": ["A"], "hours": [1, 1], "module": "test_b.py"},
            ]
        },
        Path("."),
    )
    modules = {"A": "test_a.py", "B": "test_b.py"}
    run = TeamRun(
        plan, ["test_a.py::test_1", "test_a.py::test_2", "test_b.py::test_1"], modules, set(modules)
    )

    class Report:
        def __init__(self, nodeid: str, when: str, outcome: str = "passed", reason: str = "", props=()):
            self.nodeid, self.when, self.outcome = nodeid, when, outcome
            self.longrepr = ("x", 1, f"Skipped: {reason}") if reason else None
            self.user_properties = list(props)

    ops = [{"op": "[h] => file /etc/a", "diff": "+a\n"}]
    run.add_report(
        Report(
            "test_a.py::test_1", "setup", "skipped", "check mode: not verified", [("hvs_would_change", ops)]
        )
    )
    run.add_report(Report("test_a.py::test_1", "teardown"))
    run.add_report(Report("test_a.py::test_2", "setup", "skipped", "waived: kvm (profile scratch)"))
    run.add_report(Report("test_a.py::test_2", "teardown"))
    status = run.teams["A"]
    assert status.verdict is Verdict.CHECKED and not status.failing
    assert status.would_change == ops
    assert not Verdict.CHECKED.counts_green and Verdict.CHECKED.unblocks
    assert run.ready("B") and run.teams["B"].verdict is Verdict.PENDING
    # In a dry run a team whose every check was waived is "checked" too, not verified green.
    dry = TeamRun(plan, ["test_a.py::test_1"], modules, set(modules), check_mode=True)
    dry.add_report(Report("test_a.py::test_1", "setup", "skipped", "waived: kvm (profile scratch)"))
    dry.add_report(Report("test_a.py::test_1", "teardown"))
    assert dry.teams["A"].verdict is Verdict.CHECKED
