"""A dry run (--check), owned by the engine: only apply fixtures are set up, check bodies are
skipped as check-mode skips, teams end "checked" (unblocking their dependents, never recorded
green), and the controller prints and writes the would-change ops the reports carry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from synthetic import run, signals, timeline, write_suite

from engine import contract
from engine.contract import WouldChange
from engine.plan import plan_from_data
from engine.run import TeamRun
from engine.state import Verdict

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("engine_env")

CHAIN = {"Alpha": (1, []), "Bravo": (2, ["Alpha"]), "Charlie": (2, ["Alpha"]), "Delta": (3, ["Bravo"])}

# What a targets plugin does under --check, reduced to the engine's contract: each report of
# an apply fixture's setup carries its would-change ops; every report is logged for the test.
CHECK_CONFTEST = """
import json
import pytest
from engine import contract
from engine.contract import WouldChange

DIFF = "--- a/etc/x\\n+++ b/etc/x\\n" + "".join(f"+line {n}\\n" for n in range(40))

@pytest.fixture(scope="session")
def settings():
    with open("setup.log", "a") as log:
        log.write("settings\\n")
    return {"mode": "from a plugin"}

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    team = item.module.__name__.removeprefix("test_")
    if call.when == "setup" and item.name == "test_1" and team != "charlie":
        ops = [WouldChange(f"[hvs] => file /etc/{team}.conf", DIFF), WouldChange(f"[hvs] => service {team}")]
        contract.add_changes(report, len(ops), ops)
    return report

def pytest_runtest_logreport(report):
    with open("reports.jsonl", "a") as out:
        skipped = report.skipped and isinstance(report.longrepr, tuple)
        reason = report.longrepr[2].removeprefix("Skipped: ") if skipped else ""
        location = report.longrepr[0] if skipped else ""
        out.write(json.dumps([report.nodeid, report.when, report.outcome, reason, location]) + "\\n")
"""


def team_module(team: str, *, apply_error: str | None = None) -> str:
    """A team whose check bodies fail if they ever run; its apply fixture logs its setup."""
    raise_error = f"    raise RuntimeError({apply_error!r})" if apply_error else "    pass"
    return "\n".join(
        [
            "import pytest",
            "from engine import contract",
            "",
            "@contract.apply_fixture",
            "def applied(settings):",
            "    with open('setup.log', 'a') as log:",
            f"        log.write('applied {team}\\n')",
            raise_error,
            "",
            '@pytest.mark.task("Main task")',
            "def test_1(applied):",
            "    raise AssertionError('a check body ran')",
            "",
            '@pytest.mark.task("Main task")',
            "def test_2(applied):",
            "    raise AssertionError('a check body ran')",
            "",
        ]
    )


def check_suite(pytester: pytest.Pytester, failing: str | None = None) -> None:
    bodies = {name: team_module(name, apply_error="no apt" if name == failing else None) for name in CHAIN}
    write_suite(pytester, CHAIN, bodies)
    pytester.makeconftest(CHECK_CONFTEST)


def reports(pytester: pytest.Pytester) -> list[list[str]]:
    return [json.loads(line) for line in (pytester.path / "reports.jsonl").read_text().splitlines()]


def setup_log(pytester: pytest.Pytester) -> list[str]:
    return (pytester.path / "setup.log").read_text().splitlines()


@pytest.mark.parametrize("xdist", [("-p", "no:xdist"), ("-n", "2")], ids=["no-xdist", "n2"])
def test_check_mode_skips_are_not_failures_and_teams_are_checked(
    pytester: pytest.Pytester, xdist: tuple[str, str]
) -> None:
    check_suite(pytester)
    # An earlier real run recorded Alpha green: a dry run must not overwrite it.
    state = pytester.path / "reports" / "state" / "default.json"
    state.parent.mkdir(parents=True)
    state.write_text(
        json.dumps({"target": "default", "teams": {"Alpha": {"verdict": "green", "at": "then"}}})
    )
    result = run(pytester, *xdist, "-rs", "--check")
    assert result.ret == 0, result.stdout.str()
    assert result.parseoutcomes().get("checked") == 8
    # Each team's apply fixture ran, once per module, after the plugin's fixture; no check
    # body did (each would have failed).
    log = setup_log(pytester)
    assert sorted(line for line in log if line != "settings") == [f"applied {name}" for name in CHAIN]
    assert log[0] == "settings"
    assert {name: entry["outcome"] for name, entry in timeline(pytester).items()} == dict.fromkeys(
        CHAIN, "checked"
    )
    heads = sorted(signal["text"].splitlines()[0] for signal in signals(pytester))
    assert heads == [f"🔎 {name.upper()} CHECKED" for name in sorted(CHAIN)]
    assert all(signal["verdict"] == "checked" for signal in signals(pytester))
    recorded = json.loads(state.read_text())["teams"]
    assert recorded == {"Alpha": {"verdict": "green", "at": "then", "first_failure": None}}
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
            contract.check_reason("6 op(s) would change in 3 team(s); nothing was applied or verified"),
            "teams: 0 green, 0 waived, 0 failed, 0 blocked, 0 not implemented, 4 checked",
        ]
    )
    document = json.loads((pytester.path / "reports" / "check.json").read_text())
    assert document["total"] == 6
    alpha = document["teams"][0]
    assert alpha["team"] == "Alpha" and alpha["outcome"] == "checked"
    assert alpha["would_change"][0]["diff"].count("+line") == 40
    assert alpha["would_change"][1] == {"op": "[hvs] => service alpha", "diff": None}
    markdown = (pytester.path / "reports" / "check.md").read_text()
    assert "+line 39" in markdown and "## Team Delta (checked): 2 op(s)" in markdown


def test_a_root_apply_error_in_check_mode_fails_and_blocks(pytester: pytest.Pytester) -> None:
    check_suite(pytester, failing="Bravo")
    result = run(pytester, "-p", "no:xdist", "--check")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = {name: entry["outcome"] for name, entry in timeline(pytester).items()}
    assert outcomes == {"Alpha": "checked", "Bravo": "failed", "Charlie": "checked", "Delta": "blocked"}
    result.stdout.fnmatch_lines(["*RuntimeError: no apt*"])
    recorded = json.loads((pytester.path / "reports" / "state" / "default.json").read_text())["teams"]
    assert {name: entry["verdict"] for name, entry in recorded.items()} == {
        "Bravo": "failed",
        "Delta": "blocked",
    }


# One team module with everything check mode tells apart.
FIXTURES_MODULE = """
import pytest
from engine import contract

def log(name):
    with open("setup.log", "a") as out:
        out.write(name + "\\n")

@pytest.fixture(scope="module")
def certs():
    # Verification scaffolding, declared (and requested) before the apply fixture.
    log("certs")
    return "certs"

@pytest.fixture(scope="module")
def paths(settings):
    # Not an apply fixture, but the apply fixtures need it: part of the apply.
    log("paths")
    return {"conf": "/etc/served.conf"}

@contract.apply_fixture
def applied(paths):
    log("applied")

@contract.apply_fixture
def applied_served(applied, paths):
    log("applied_served")
    # Reads back what an earlier step would have written: never there in a dry run.
    raise AssertionError(f"{paths['conf']} is missing\\nsecond line")

@contract.apply_fixture
def applied_late():
    log("applied_late")

@pytest.fixture
def listener(certs):
    log("listener")
    yield 1
    log("listener down")

@pytest.fixture(autouse=True)
def scaffolding():
    log("autouse scaffolding")

@pytest.mark.task("Main task")
def test_reads_certs_first(certs, applied):
    raise AssertionError("a check body ran")

@pytest.mark.task("Main task")
def test_listener(listener, applied):
    raise AssertionError("a check body ran")

@pytest.mark.task("Main task")
def test_served(applied_served):
    raise AssertionError("a check body ran")

@pytest.mark.task("Main task")
def test_served_with_certs_first(certs, applied_served, applied_late):
    raise AssertionError("a check body ran")
"""


def test_check_mode_sets_up_apply_fixtures_only_and_notes_what_stopped(pytester: pytest.Pytester) -> None:
    write_suite(pytester, {"Alpha": (1, []), "Bravo": (2, ["Alpha"])}, {"Alpha": FIXTURES_MODULE})
    pytester.makepyfile(test_bravo=team_module("Bravo"))
    pytester.makeconftest(CHECK_CONFTEST)
    result = run(pytester, "-p", "no:xdist", "-rs", "--check")
    assert result.ret == 0, result.stdout.str()
    # The plugin's fixture and what the apply fixtures need are set up, and every apply
    # fixture, also where a verification fixture comes first and after one that stopped;
    # certs, listener and the module's autouse scaffolding are not.
    assert setup_log(pytester) == [
        "settings",
        "paths",
        "applied",
        "applied_served",
        "applied_late",
        "applied Bravo",
    ]
    entries = reports(pytester)
    by_phase = {
        (nodeid.split("::")[1], when): (outcome, reason) for nodeid, when, outcome, reason, _ in entries
    }
    plain = contract.check_reason()
    stopped = f"{plain}; fixture 'applied_served' stopped: AssertionError: /etc/served.conf is missing"
    # Every test is set up and skipped in the call phase instead of running its body; the
    # apply fixture that stopped is a note of each test that needs it, not a failure.
    for name in ("test_reads_certs_first", "test_listener", "test_served", "test_served_with_certs_first"):
        assert by_phase[(name, "setup")] == ("passed", "")
        assert by_phase[(name, "teardown")] == ("passed", "")
    assert by_phase[("test_reads_certs_first", "call")] == ("skipped", plain)
    assert by_phase[("test_listener", "call")] == ("skipped", plain)
    assert by_phase[("test_served", "call")] == ("skipped", stopped)
    assert by_phase[("test_served_with_certs_first", "call")] == ("skipped", stopped)
    # Reported at the test's location, not the engine's.
    locations = {nodeid.split("::")[0]: location for nodeid, *_, location in entries if location}
    assert locations == {name: str(pytester.path / name) for name in ("test_alpha.py", "test_bravo.py")}
    assert {name: entry["outcome"] for name, entry in timeline(pytester).items()} == {
        "Alpha": "checked",
        "Bravo": "checked",
    }
    result.stdout.fnmatch_lines(["Team Alpha (checked): 0 op(s) would change", f"  ! {stopped}"])


def test_an_error_below_an_apply_dependent_fixture_is_a_real_failure(pytester: pytest.Pytester) -> None:
    module = FIXTURES_MODULE.replace(
        '    log("applied")\n', '    log("applied")\n    raise RuntimeError("no apt")\n'
    )
    # Only the dependent fixture is requested: the root's error must not become a note.
    module = module[: module.index("@pytest.mark.task")] + (
        '@pytest.mark.task("Main task")\ndef test_served(applied_served):\n    pass\n'
    )
    write_suite(pytester, {"Alpha": (1, [])}, {"Alpha": module})
    pytester.makeconftest(CHECK_CONFTEST)
    result = run(pytester, "-p", "no:xdist", "--check")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert timeline(pytester)["Alpha"]["outcome"] == "failed"
    result.stdout.fnmatch_lines(["*RuntimeError: no apt*"])
    assert "applied_served" not in setup_log(pytester)


def test_apply_mode_runs_every_fixture_and_body(pytester: pytest.Pytester) -> None:
    module = FIXTURES_MODULE.replace('raise AssertionError(f"{paths', 'print(f"{paths').replace(
        'raise AssertionError("a check body ran")', "pass"
    )
    write_suite(pytester, {"Alpha": (1, [])}, {"Alpha": module})
    pytester.makeconftest(CHECK_CONFTEST)
    result = run(pytester, "-p", "no:xdist")
    result.assert_outcomes(passed=4)
    assert {"certs", "listener", "autouse scaffolding", "applied_late"} <= set(setup_log(pytester))


MODE_CONFTEST = """
from engine import contract

def pytest_configure(config):
    print(f"mode seen by another plugin: {contract.mode(config)}")
"""


@pytest.mark.parametrize(
    ("args", "mode"), [((), "apply"), (("--check",), "check"), (("--verify-only",), "verify")]
)
def test_the_engine_sets_the_mode_before_other_plugins_configure(
    pytester: pytest.Pytester, args: tuple[str, ...], mode: str
) -> None:
    write_suite(pytester, {"Alpha": (1, [])}, {"Alpha": "def test_1():\n    pass\n"})
    pytester.makeconftest(MODE_CONFTEST)
    result = run(pytester, "-p", "no:xdist", "-s", *args)
    result.stdout.fnmatch_lines([f"mode seen by another plugin: {mode}"])


def test_check_and_verify_only_exclude_each_other(pytester: pytest.Pytester) -> None:
    write_suite(pytester, {"Alpha": (1, [])}, {"Alpha": "def test_1():\n    pass\n"})
    result = run(pytester, "--check", "--verify-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--check and --verify-only exclude each other*"])


class Report:
    def __init__(self, nodeid: str, when: str, outcome: str = "passed", reason: str = "") -> None:
        self.nodeid, self.when, self.outcome = nodeid, when, outcome
        self.longrepr = ("x", 1, f"Skipped: {reason}") if reason else None
        self.user_properties: list[tuple[str, Any]] = []


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
    ops = [WouldChange("[h] => file /etc/a", "+a\n"), WouldChange("[h] => service a")]
    setup = Report("test_a.py::test_1", "setup", "skipped", contract.check_reason())
    contract.add_changes(setup, len(ops), ops)
    run.add_report(setup)
    run.add_report(Report("test_a.py::test_1", "teardown"))
    run.add_report(Report("test_a.py::test_2", "setup", "skipped", contract.waiver_reason("kvm", "scratch")))
    run.add_report(Report("test_a.py::test_2", "teardown"))
    status = run.teams["A"]
    assert status.verdict is Verdict.CHECKED and not status.failing
    assert status.would_change == ops and status.changes == 2
    assert run.ready("B") and run.teams["B"].verdict is Verdict.PENDING
    # In a dry run a team whose every check was waived is "checked" too, not verified green.
    dry = TeamRun(plan, ["test_a.py::test_1"], modules, set(modules), check_mode=True)
    dry.add_report(Report("test_a.py::test_1", "setup", "skipped", contract.waiver_reason("kvm", "scratch")))
    dry.add_report(Report("test_a.py::test_1", "teardown"))
    assert dry.teams["A"].verdict is Verdict.CHECKED
