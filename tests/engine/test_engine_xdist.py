"""The engine plugin end to end on synthetic teams: order, overlap, failure isolation,
signals and timeline, under xdist and without it."""

from __future__ import annotations

import pytest
from synthetic import run, signals, sleeper, stamps, timeline, write_suite

from engine import contract

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("engine_env")

DIAMOND = {
    "Alpha": (1, []),
    "Bravo": (2, ["Alpha"]),
    "Charlie": (2, ["Alpha"]),
    "Delta": (3, ["Bravo", "Charlie"]),
}


def test_order_and_real_overlap_under_xdist(pytester: pytest.Pytester) -> None:
    delta = sleeper("Delta", 0.2) + (
        "\n\ndef test_prerequisites_visible_to_pytest_dependency(request):\n"
        "    from pytest_dependency import depends\n"
        '    depends(request, ["team:Bravo", "team:Charlie"], scope="session")\n'
    )
    write_suite(
        pytester,
        DIAMOND,
        {
            "Alpha": sleeper("Alpha", 0.5),
            "Bravo": sleeper("Bravo", 2),
            "Charlie": sleeper("Charlie", 2),
            "Delta": delta,
        },
    )
    result = run(pytester, "-n", "3")
    result.assert_outcomes(passed=9)
    own = stamps(pytester)
    # A dependent never starts before its prerequisites end (the tests' own clocks).
    assert own["Bravo"][0] >= own["Alpha"][1] and own["Charlie"][0] >= own["Alpha"][1]
    assert own["Delta"][0] >= max(own["Bravo"][1], own["Charlie"][1])
    # Bravo and Charlie really overlap: 2 s each, together well under 4 s, on two workers.
    span = max(own["Bravo"][1], own["Charlie"][1]) - min(own["Bravo"][0], own["Charlie"][0])
    assert span < 3.5, span
    assert own["Bravo"][2].isdisjoint(own["Charlie"][2])
    # Each team ran on one worker.
    assert all(len(workers) == 1 for _, _, workers in own.values())
    teams = timeline(pytester)
    assert {name: entry["outcome"] for name, entry in teams.items()} == dict.fromkeys(DIAMOND, "green")
    assert teams["Delta"]["start"] >= max(teams["Bravo"]["end"], teams["Charlie"]["end"])
    sent = signals(pytester)
    order = [s["team"] for s in sent]
    assert order[0] == "Alpha" and order[-1] == "Delta"
    alpha = sent[0]
    assert alpha["text"].splitlines() == [
        "✅ ALPHA COMPLETE",
        "Phase: 1",
        f"Duration: {alpha['duration']:.1f} s",
        "Issues: None",
        "Next Teams Can Start: Team Bravo, Team Charlie",
    ]
    result.stdout.fnmatch_lines(
        ["✅ ALPHA COMPLETE", "*Timeline Comparison*", "| Actual makespan (this run) |*"]
    )
    assert "ALPHA COMPLETE" in (pytester.path / "reports" / "signals.md").read_text()


ISOLATION = {
    "Alpha": (1, []),
    "Bravo": (2, ["Alpha"]),
    "Charlie": (2, ["Alpha"]),
    "Delta": (3, ["Bravo", "Charlie"]),
    "Echo": (3, ["Charlie"]),
    "Foxtrot": (4, ["Delta"]),
}


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])
def test_failure_blocks_exactly_the_dependents(pytester: pytest.Pytester, mode: list[str]) -> None:
    bodies = {name: sleeper(name, 0.1) for name in ISOLATION}
    bodies["Bravo"] = sleeper("Bravo", 0.1, fail="test_1")
    write_suite(pytester, ISOLATION, bodies)
    result = run(pytester, *mode, "-rs")
    result.assert_outcomes(passed=7, failed=1, skipped=4)
    teams = timeline(pytester)
    outcomes = {name: entry["outcome"] for name, entry in teams.items()}
    assert outcomes == {
        "Alpha": "green",
        "Bravo": "failed",
        "Charlie": "green",
        "Delta": "blocked",
        "Echo": "green",
        "Foxtrot": "blocked",
    }
    cause = "Team Bravo (test_bravo.py::test_1)"
    assert teams["Delta"]["blocked_by"] == cause and teams["Foxtrot"]["blocked_by"] == cause
    assert set(stamps(pytester)) == {"Alpha", "Bravo", "Charlie", "Echo"}
    result.stdout.fnmatch_lines([f"SKIPPED * test_foxtrot.py:*: {contract.blocked_reason(cause)}"])
    heads = {s["team"]: s["text"].splitlines()[0] for s in signals(pytester)}
    assert heads["Bravo"] == "❌ BRAVO FAILED" and heads["Foxtrot"] == "⛔ FOXTROT BLOCKED"
    bravo = next(s for s in signals(pytester) if s["team"] == "Bravo")
    assert bravo["issues"] == ["test_bravo.py::test_1"]
    result.stdout.fnmatch_lines(
        [
            "Success metrics (plan):",
            "  all phases complete with verification passing: no (3/6 teams green; Bravo (failed), "
            "Delta (blocked), Foxtrot (blocked))",
            "  total time < 26 h: yes (*",
            "  no step required rollback (no team failed): no (failed: Bravo)",
        ]
    )


def test_topological_order_without_xdist(pytester: pytest.Pytester) -> None:
    # Alphabetical order would run "Able" before "Zulu", which it requires.
    write_suite(
        pytester,
        {"Zulu": (1, []), "Able": (2, ["Zulu"])},
        {"Zulu": sleeper("Zulu"), "Able": sleeper("Able")},
    )
    result = run(pytester, "-n", "0", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["test_zulu.py::test_1 PASSED*", "test_able.py::test_1 PASSED*"], consecutive=False
    )


def test_not_implemented_team_blocks_its_dependents(pytester: pytest.Pytester) -> None:
    write_suite(
        pytester,
        DIAMOND,
        {name: sleeper(name) for name in DIAMOND},
        missing=("Charlie",),
    )
    result = run(pytester, "-n", "2", "-rs")
    result.assert_outcomes(passed=4, skipped=2)
    teams = timeline(pytester)
    assert teams["Charlie"]["outcome"] == "not implemented"
    assert teams["Delta"]["blocked_by"] == "Team Charlie (not implemented)"
    result.stdout.fnmatch_lines(["not implemented (no test module): Team Charlie"])


def test_worker_crash_fails_the_rest_of_the_team_and_blocks_dependents(pytester: pytest.Pytester) -> None:
    bodies = {name: sleeper(name) for name in DIAMOND}
    bodies["Bravo"] = "import os\n\ndef test_1():\n    os._exit(3)\n\ndef test_2():\n    pass\n"
    write_suite(pytester, DIAMOND, bodies)
    result = run(pytester, "-n", "2")
    teams = timeline(pytester)
    assert teams["Bravo"]["outcome"] == "failed"
    assert teams["Charlie"]["outcome"] == "green"
    assert teams["Delta"]["blocked_by"] == "Team Bravo (test_bravo.py::test_1)"
    result.stdout.fnmatch_lines(["*crashed while running 'test_bravo.py::test_1'*"])
    assert "not run: worker gw" in result.stdout.str()
    assert result.ret == 1
