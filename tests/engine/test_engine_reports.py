"""Selection rules, --resume, the chat webhook and the Allure results of the engine."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from synthetic import run, signals, sleeper, timeline, write_suite

from engine import contract
from engine.allure import CATEGORIES
from engine.contract import SkipKind

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("engine_env")

CHAIN = {"Alpha": (1, []), "Bravo": (2, ["Alpha"]), "Charlie": (2, ["Alpha"])}


def chain(pytester: pytest.Pytester) -> None:
    write_suite(pytester, CHAIN, {name: sleeper(name) for name in CHAIN})


def test_selection_without_prerequisites_is_refused_then_resumed(pytester: pytest.Pytester) -> None:
    chain(pytester)
    refused = run(pytester, "-n", "2", "-k", "bravo")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*Team Bravo needs Team Alpha, which is not selected (no recorded run*"])
    # --teams pulls prerequisites in; its verdicts are recorded for the target.
    pulled = run(pytester, "-p", "no:xdist", "--teams", "Bravo")
    pulled.assert_outcomes(passed=4)
    assert {n for n, e in timeline(pytester).items() if e["outcome"] == "green"} == {"Alpha", "Bravo"}
    recorded = json.loads((pytester.path / "reports" / "state" / "default.json").read_text())
    assert recorded["teams"]["Alpha"]["verdict"] == "green"
    resumed = run(pytester, "-p", "no:xdist", "-k", "charlie", "--resume")
    resumed.assert_outcomes(passed=2)
    resumed.stdout.fnmatch_lines(
        ["--resume: counted green from target 'default': Team Alpha (recorded green at *)"]
    )
    # A partly selected prerequisite is not verified either.
    partial = run(pytester, "-p", "no:xdist", "-k", "test_1")
    assert partial.ret == pytest.ExitCode.USAGE_ERROR
    partial.stderr.fnmatch_lines(["*Team Bravo needs Team Alpha, which is partly selected (1 of 2 tests)*"])


def test_unknown_team_and_unknown_task_are_clear_errors(pytester: pytest.Pytester) -> None:
    chain(pytester)
    result = run(pytester, "--teams", "Zulu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--teams: unknown team 'Zulu'; the plan has: Alpha, Bravo, Charlie"])
    pytester.makepyfile(test_alpha='import pytest\n\n@pytest.mark.task("Typo")\ndef test_1():\n    pass\n')
    result = run(pytester, "-p", "no:xdist")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*task 'Typo' is not a task of Team Alpha in the plan (Main task)*"])


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, str]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, str]]]]:
    received: list[dict[str, str]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/s3cr3t-token", received
    server.shutdown()
    server.server_close()


def test_signals_are_posted_to_the_webhook(pytester: pytest.Pytester, webhook: tuple[str, list]) -> None:
    url, received = webhook
    chain(pytester)
    result = run(pytester, "-n", "2", "--signal-webhook", url)
    result.assert_outcomes(passed=6)
    heads = sorted(body["text"].splitlines()[0] for body in received)
    assert heads == ["✅ ALPHA COMPLETE", "✅ BRAVO COMPLETE", "✅ CHARLIE COMPLETE"]


def test_a_failing_webhook_is_reported_and_never_fails_the_run(pytester: pytest.Pytester) -> None:
    chain(pytester)
    # Nothing listens on port 9 of 127.0.0.1 (discard): connection refused at once.
    result = run(pytester, "-p", "no:xdist", "--signal-webhook", "http://127.0.0.1:9/hooks/s3cr3t-token")
    result.assert_outcomes(passed=6)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["signal webhook: 3 post(s) failed*http://127.0.0.1:9/…*"])
    assert "s3cr3t" not in result.stdout.str() + result.stderr.str()


def test_allure_results_carry_plan_labels_and_categories(pytester: pytest.Pytester) -> None:
    write_suite(pytester, CHAIN, {name: sleeper(name) for name in CHAIN})
    pytester.makepyfile(
        test_bravo="import pytest\n\n@pytest.mark.task('Main task')\ndef test_1():\n    assert False\n"
    )
    pytester.makepyfile(
        conftest="import engine\n\ndef pytest_configure(config):\n"
        "    engine.add_environment(config, 'profile', 'scratch password=hunter2')\n"
    )
    result = run(pytester, "-n", "2", "--alluredir", "allure-results")
    result.assert_outcomes(passed=4, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    results_dir = pytester.path / "allure-results"
    results = [json.loads(p.read_text()) for p in results_dir.glob("*-result.json")]
    by_name = {r["fullName"]: r for r in results}
    assert not [r for r in results if "boundary" in r["name"]]
    alpha = by_name["test_alpha#test_1"]
    labels = {(label["name"], label["value"]) for label in alpha["labels"]}
    assert {("epic", "Phase 1"), ("feature", "Team Alpha"), ("story", "Main task")} <= labels
    summary = by_name["engine.run_summary"]
    assert summary["status"] == "failed"
    assert summary["statusDetails"]["message"] == "run failed: Team Bravo (failed)"
    attachment = results_dir / summary["attachments"][0]["source"]
    assert "Timeline Comparison" in attachment.read_text()
    categories = {c["name"] for c in json.loads((results_dir / "categories.json").read_text())}
    assert {"blocked", "waived", "not applicable", "apply failed", "verification failed"} <= categories
    environment = (results_dir / "environment.properties").read_text()
    assert "profile=scratch password=" in environment and "hunter2" not in environment


KVM = contract.waiver_reason("kvm", "scratch")

# How a targets plugin waives: a capability marker the target's profile cannot provide.
WAIVING_CONFTEST = """
from engine import contract

def pytest_configure(config):
    config.addinivalue_line("markers", "requires(capability): a capability a profile may waive")

def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in item.iter_markers("requires"):
            contract.waive(item, mark.args[0], "scratch")
"""


def waived_module(*tests: str, passing: tuple[str, ...] = ()) -> str:
    lines = ["import pytest", ""]
    for name in tests:
        lines += [
            '@pytest.mark.requires("kvm")',
            "@pytest.mark.task('Main task')",
            f"def {name}():",
            "    1 / 0",
            "",
        ]
    for name in passing:
        lines += ["@pytest.mark.task('Main task')", f"def {name}():", "    pass", ""]
    return "\n".join(lines)


def test_waivers_beside_passes_count_green_and_show_as_their_own_outcome(pytester: pytest.Pytester) -> None:
    write_suite(
        pytester,
        {"Alpha": (1, []), "Bravo": (2, ["Alpha"])},
        {"Alpha": waived_module("test_needs_kvm", passing=("test_plain",)), "Bravo": sleeper("Bravo")},
    )
    pytester.makeconftest(WAIVING_CONFTEST)
    result = run(pytester, "-p", "no:xdist")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*3 passed, 1 waived*"])
    result.stdout.fnmatch_lines([f"Issues: 1 check(s) {KVM}"])
    result.stdout.fnmatch_lines([f"  WAIVED test_alpha.py::test_needs_kvm: {KVM}"])
    assert {name: entry["outcome"] for name, entry in timeline(pytester).items()} == {
        "Alpha": "green",
        "Bravo": "green",
    }
    # Waivers beside verified checks do not stand in the way of the plan's success metrics.
    result.stdout.fnmatch_lines(
        [
            "  all phases complete with verification passing: yes (2/2 teams green)",
            "  no step required rollback (no team failed): yes",
            "teams: 2 green, 0 waived, 0 failed, 0 blocked, 0 not implemented",
        ]
    )


@pytest.mark.parametrize("xdist", [("-p", "no:xdist"), ("-n", "2")], ids=["no-xdist", "n2"])
def test_a_team_with_every_check_waived_is_waived_not_green(
    pytester: pytest.Pytester, xdist: tuple[str, str]
) -> None:
    teams = {"Base": (0, []), "Alpha": (1, ["Base"]), "Bravo": (2, ["Alpha"])}
    bodies = {
        "Base": waived_module("test_kvm", "test_boot"),
        "Alpha": sleeper("Alpha"),
        "Bravo": sleeper("Bravo"),
    }
    write_suite(pytester, teams, bodies)
    pytester.makeconftest(WAIVING_CONFTEST)
    result = run(pytester, *xdist, "--alluredir", "allure-results")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*4 passed, 2 waived*"])
    # Its dependents ran (the gate unblocks them, also across xdist workers).
    outcomes = {name: (entry["outcome"], entry["verified"]) for name, entry in timeline(pytester).items()}
    assert outcomes == {"Base": ("waived", False), "Alpha": ("green", True), "Bravo": ("green", True)}
    base = next(signal for signal in signals(pytester) if signal["team"] == "Base")
    assert base["verdict"] == "waived"
    assert base["text"].splitlines() == [
        "⚠️ BASE WAIVED",
        "Phase: 0",
        f"Duration: {base['duration']:.1f} s",
        f"Issues: not verified: every check was waived; 2 check(s) {KVM}",
        "Next Teams Can Start: Team Alpha",
    ]
    result.stdout.fnmatch_lines(["| Base | 0 | waived (not verified) |*"])
    summary = [
        "  all phases complete with verification passing: as far as the target's waivers allow "
        "(2/3 teams green; Base (waived))",
        f"    left unverified, {KVM}: 2 check(s) (Base 2)",
        "  total time < 26 h: yes (*",
        "  no step required rollback (no team failed): yes",
        "teams: 2 green, 1 waived (not verified), 0 failed, 0 blocked, 0 not implemented",
    ]
    result.stdout.fnmatch_lines(summary)
    markdown = (pytester.path / "reports" / "timeline.md").read_text().splitlines()
    assert summary[0] in markdown and summary[-1] in markdown
    document = json.loads((pytester.path / "reports" / "timeline.json").read_text())
    assert document["counts"] == {"green": 2, "waived": 1, "failed": 0, "blocked": 0, "not implemented": 0}
    recorded = json.loads((pytester.path / "reports" / "state" / "default.json").read_text())["teams"]
    assert {name: entry["verdict"] for name, entry in recorded.items()} == {
        "Base": "waived",
        "Alpha": "green",
        "Bravo": "green",
    }
    # Not a failure (the run exits 0) in any channel, yet visibly not verified: the Allure run
    # summary is "skipped", as the waived checks are, and says which team.
    text = "run not verified: Team Base (waived); no team failed"
    result.stdout.fnmatch_lines([summary[-1], text])
    assert markdown[-1] == text
    assert document["outcome"] == {"status": "not verified", "text": text}
    results = [json.loads(p.read_text()) for p in (pytester.path / "allure-results").glob("*-result.json")]
    run_summary = next(r for r in results if r["fullName"] == "engine.run_summary")
    assert run_summary["status"] == "skipped"
    assert run_summary["statusDetails"]["message"] == text


def test_resume_does_not_count_a_recorded_waived_team(pytester: pytest.Pytester) -> None:
    teams = {"Base": (0, []), "Alpha": (1, ["Base"])}
    write_suite(pytester, teams, {"Base": waived_module("test_kvm"), "Alpha": sleeper("Alpha")})
    pytester.makeconftest(WAIVING_CONFTEST)
    assert run(pytester, "-p", "no:xdist").ret == 0
    refused = run(pytester, "-p", "no:xdist", "-k", "alpha", "--resume")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(
        [
            "*Team Alpha needs Team Base, which is not selected (last recorded waived at *); "
            "*(--resume counts only green: a waived team verified nothing)"
        ]
    )
    # --teams with --resume runs the waived prerequisite again (it costs only its skips).
    again = run(pytester, "-p", "no:xdist", "--teams", "Alpha", "--resume")
    assert again.parseoutcomes() == {"passed": 2, "waived": 1}
    assert timeline(pytester)["Base"]["outcome"] == "waived"
    assert "counted green" not in again.stdout.str()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (SkipKind.WAIVED, KVM),
        (SkipKind.NOT_APPLICABLE, contract.not_applicable_reason("alpha.tls.client_auth is off")),
        (SkipKind.BLOCKED, contract.blocked_reason("Team Alpha (test_alpha.py::test_1)")),
        (SkipKind.CHECK, contract.check_reason()),
    ],
)
def test_allure_categories_classify_skips_by_the_contract(kind: SkipKind, reason: str) -> None:
    # Allure matches the whole message: "Skipped: <reason>"; first matching category wins.
    message = f"Skipped: {reason}"
    matched = [
        c["name"] for c in CATEGORIES if "messageRegex" in c and re.fullmatch(c["messageRegex"], message)
    ]
    named = {
        SkipKind.WAIVED: "waived",
        SkipKind.NOT_APPLICABLE: "not applicable",
        SkipKind.BLOCKED: "blocked",
        SkipKind.CHECK: "not verified (check mode)",
    }
    assert matched == [named[kind]]
    assert not [
        c
        for c in CATEGORIES
        if "messageRegex" in c and re.fullmatch(c["messageRegex"], "Skipped: no network")
    ]
