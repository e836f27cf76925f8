"""Selection rules, --resume, the chat webhook and the Allure results of the engine."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from synthetic import run, sleeper, timeline, write_suite

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
    results_dir = pytester.path / "allure-results"
    results = [json.loads(p.read_text()) for p in results_dir.glob("*-result.json")]
    by_name = {r["fullName"]: r for r in results}
    assert not [r for r in results if "boundary" in r["name"]]
    alpha = by_name["test_alpha#test_1"]
    labels = {(label["name"], label["value"]) for label in alpha["labels"]}
    assert {("epic", "Phase 1"), ("feature", "Team Alpha"), ("story", "Main task")} <= labels
    summary = by_name["engine.run_summary"]
    assert summary["status"] == "failed" and "Team Bravo (failed)" in summary["statusDetails"]["message"]
    attachment = results_dir / summary["attachments"][0]["source"]
    assert "Timeline Comparison" in attachment.read_text()
    categories = {c["name"] for c in json.loads((results_dir / "categories.json").read_text())}
    assert {"blocked", "waived", "apply failed", "verification failed"} <= categories
    environment = (results_dir / "environment.properties").read_text()
    assert "profile=scratch password=" in environment and "hunter2" not in environment


def test_waivers_count_green_and_show_as_their_own_outcome(pytester: pytest.Pytester) -> None:
    waived = "\n".join(
        [
            "import pytest",
            "",
            "@pytest.mark.task('Main task')",
            "def test_needs_kvm():",
            "    pytest.skip('waived: kvm (profile scratch)')",
            "",
            "@pytest.mark.task('Main task')",
            "def test_plain():",
            "    pass",
        ]
    )
    write_suite(
        pytester,
        {"Alpha": (1, []), "Bravo": (2, ["Alpha"])},
        {"Alpha": waived, "Bravo": sleeper("Bravo")},
    )
    result = run(pytester, "-p", "no:xdist")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*3 passed, 1 waived*"])
    result.stdout.fnmatch_lines(["Issues: 1 check(s) waived: kvm (profile scratch)"])
    result.stdout.fnmatch_lines(["  WAIVED test_alpha.py::test_needs_kvm: waived: kvm (profile scratch)"])
    assert timeline(pytester)["Bravo"]["outcome"] == "green"
    # Waivers do not stand in the way of the plan's success metrics.
    result.stdout.fnmatch_lines(
        [
            "  all phases complete with verification passing: yes (2/2 teams green)",
            "  no step required rollback (no team failed): yes",
        ]
    )
