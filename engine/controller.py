"""The controller: decides team verdicts from test reports, gates the scheduler, and writes
every report (signals, timeline, recorded verdicts, Allure environment/categories/summary).
The run's outcome (`engine.outcome`) is decided once, when the session finishes; the exit
status, the terminal summary, the timeline and the Allure run summary all show that one.

Under xdist it lives in the controlling process only; without xdist in the one process.
Workers never write reports: they read the team gates from the shared state file.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from apply.redact import Redactor
from engine import allure, background, checkreport, contract, timeline
from engine.background import BackgroundSpan
from engine.config import ENVIRONMENT_KEY, WEBHOOK_KEY, EngineSettings
from engine.outcome import RunOutcome, RunStatus, run_outcome
from engine.run import TeamRun
from engine.scheduler import DAGScheduling
from engine.signals import Signal, SignalLog, WebhookPoster
from engine.state import RecordedVerdict, SharedState, TeamGate, Verdict, VerdictLog, utc_now_iso

SIGNALLED = {
    Verdict.GREEN: "green",
    Verdict.WAIVED: "waived",
    Verdict.NOT_APPLICABLE: "not applicable",
    Verdict.FAILED: "failed",
    Verdict.BLOCKED: "blocked",
    Verdict.CHECKED: "checked",
}
# A dry run verifies nothing: its "checked" is never recorded (an earlier verdict stays).
# "waived" and "not applicable" are recorded (they replace an earlier green) but --resume
# counts only green.
RECORDED = {Verdict.GREEN, Verdict.WAIVED, Verdict.NOT_APPLICABLE, Verdict.FAILED, Verdict.BLOCKED}
OUTCOME_MARKUP = {
    RunStatus.PASSED: {"green": True},
    RunStatus.NOT_VERIFIED: {"yellow": True},
    RunStatus.FAILED: {"red": True},
}
TEAM_UNIT = "team:"


class EngineController:
    def __init__(self, config: pytest.Config, settings: EngineSettings, *, distributed: bool) -> None:
        self.config = config
        self.settings = settings
        self.distributed = distributed
        self.state_dir = Path(tempfile.mkdtemp(prefix="hvsuite-engine-"))
        self.shared = SharedState(self.state_dir / "gates.json")
        self.run: TeamRun | None = None
        self.scheduler: DAGScheduling | None = None
        self.lost_tests: dict[str, tuple[list[str], str]] = {}
        self.signal_log = SignalLog(settings.reports_dir)
        self.poster: WebhookPoster | None = None
        self.notes: list[str] = []
        self.started = time.time()
        self.workers = 0
        self.redactor = Redactor()
        self.priorities = _remaining_hours(settings)
        self.check_files: tuple[Path, Path] | None = None
        # Background jobs as they stood when the session finished (engine.start_background).
        self.background: list[BackgroundSpan] = []
        # Decided when the session finishes, for every channel that shows it.
        self.outcome: RunOutcome | None = None

    @property
    def check_mode(self) -> bool:
        """A dry run: --check, or some team was checked rather than verified."""
        if contract.mode(self.config) == "check":
            return True
        return self.run is not None and any(s.verdict is Verdict.CHECKED for s in self.run.teams.values())

    # -- xdist hooks (optional: absent with -p no:xdist) ---------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["engine_state_dir"] = str(self.state_dir)
        self.workers += 1

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> DAGScheduling:
        self.scheduler = DAGScheduling(config, log, gate=self)
        return self.scheduler

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", None) or {}
        self.config.stash.setdefault(ENVIRONMENT_KEY, {}).update(output.get("engine_environment", {}))

    # -- the scheduler's gate -----------------------------------------------------------

    def collection_ready(self, collection: Sequence[str]) -> None:
        problems: list[str] = []
        for path in sorted(self.state_dir.glob("collection-*.json")):
            problems = json.loads(path.read_text(encoding="utf-8"))["problems"]
            if problems:
                break
        self.start_run(collection, problems)

    def unit_of(self, nodeid: str) -> str:
        team = self.settings.team_of_nodeid(nodeid)
        return f"{TEAM_UNIT}{team}" if team is not None else nodeid.split("::", 1)[0]

    def ready(self, unit: str) -> bool:
        if self.run is None or not unit.startswith(TEAM_UNIT):
            return True
        return self.run.ready(unit.removeprefix(TEAM_UNIT))

    def priority(self, unit: str) -> float:
        return self.priorities.get(unit.removeprefix(TEAM_UNIT), 0.0) if unit.startswith(TEAM_UNIT) else 0.0

    def lost(self, crashitem: str, nodeids: Sequence[str], worker: str) -> None:
        self.lost_tests[crashitem] = (list(nodeids), worker)

    # -- the run ------------------------------------------------------------------------

    def start_run(self, nodeids: Sequence[str], problems: list[str]) -> None:
        if problems:
            raise pytest.UsageError("the engine refuses this run:\n  " + "\n  ".join(problems))
        implemented = self.settings.implemented()
        recorded = self.settings.recorded() if self.settings.resume else {}
        green = {name: entry for name, entry in recorded.items() if entry.verdict == Verdict.GREEN.value}
        self.run = TeamRun(
            self.settings.plan,
            nodeids,
            self.settings.module_nodeid,
            implemented,
            green,
            check_mode=contract.mode(self.config) == "check",
        )
        if not self.run.active:
            return
        counted = [
            f"Team {name} (recorded green at {status.recorded.at})"
            for name, status in self.run.teams.items()
            if status.verdict is Verdict.RECORDED_GREEN and status.recorded is not None
        ]
        if counted:
            self.notes.append(
                f"--resume: counted green from target {self.settings.target_name!r}: " + ", ".join(counted)
            )
        self.publish()

    def gates(self) -> dict[str, TeamGate]:
        return self.run.gates() if self.run is not None else {}

    def publish(self) -> None:
        """Share the current gates with workers and announce newly settled teams."""
        assert self.run is not None
        settled = self.run.take_settled()
        if not settled:
            return
        if self.distributed:
            self.shared.write(self.run.gates())
        for name in settled:
            self.announce(name)

    def announce(self, name: str) -> None:
        assert self.run is not None
        status = self.run.teams[name]
        kind = SIGNALLED.get(status.verdict)
        if kind is None or not status.nodeids:
            return
        issues = list(status.issues)
        if status.verdict is Verdict.BLOCKED and status.blocked_by:
            issues.insert(0, contract.blocked_reason(status.blocked_by))
        signal = Signal(
            team=name,
            verdict=kind,
            phase=status.phase,
            duration=status.duration,
            issues=issues,
            next_teams=self.run.next_teams(name) if status.verdict.unblocks else [],
            at=utc_now_iso(),
        )
        self.signal_log.append(signal)
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            # A line of its own even after progress dots (which xdist's reporter does not
            # track for ensure_newline); at the start of a line this is a blank separator.
            terminal.write_line("")
            for line in signal.render().splitlines():
                terminal.write_line(line, bold=line == signal.headline)
        poster = self._poster()
        if poster is not None:
            poster.post(signal)

    def _poster(self) -> WebhookPoster | None:
        if self.poster is None:
            url = self.config.getoption("engine_webhook") or self.config.getini("signal_webhook")
            timeout = float(self.config.getoption("engine_webhook_timeout"))
            if not url and WEBHOOK_KEY in self.config.stash:
                url, timeout = self.config.stash[WEBHOOK_KEY]
            if url:
                try:
                    self.poster = WebhookPoster(url, timeout, self.redactor)
                except ValueError as exc:
                    raise pytest.UsageError(str(exc)) from None
        return self.poster

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.run is None or not self.run.active:
            return
        self.run.add_report(report)
        self.publish()
        if report.when == "???" and report.nodeid in self.lost_tests:
            self._fail_lost(report)

    def _fail_lost(self, crash: pytest.TestReport) -> None:
        nodeids, worker = self.lost_tests.pop(crash.nodeid)
        for nodeid in nodeids:
            path = nodeid.split("::", 1)[0]
            lost = pytest.TestReport(
                nodeid=nodeid,
                location=(path, None, nodeid),
                keywords={},
                outcome="failed",
                longrepr=f"not run: worker {worker} crashed while running {crash.nodeid}",
                when="???",  # type: ignore[arg-type]
            )
            lost.node = getattr(crash, "node", None)  # type: ignore[attr-defined]
            self.config.hook.pytest_runtest_logreport(report=lost)
        if self.scheduler is not None:
            self.scheduler.dispatch()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._write_allure_static()
        # --collect-only runs nothing: no team stopped, no outcome, no verdict to record.
        collect_only = session.config.option.collectonly
        run = self.run if self.run is not None and self.run.active and not collect_only else None
        if run is not None:
            stopped = run.stop_unfinished()
            if stopped:
                self.notes.append(
                    "not run (the run stopped early, e.g. -x/--maxfail or an interrupt): "
                    + ", ".join(f"Team {name}" for name in stopped)
                )
            self.publish()
        # A job still running now is "unfinished": the session does not wait for it.
        teams = timeline.team_intervals(run) if run is not None else {}
        self.background = background.session_spans(self.config, teams)
        if run is not None:
            self.outcome = run_outcome(run, exitstatus, check_mode=self.check_mode)
            if self.outcome.failed and exitstatus == pytest.ExitCode.OK:
                # A team fails without a failed test too (a plain skip, a block): the exit
                # status must say so as the reports do.
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            self._write_reports(self.outcome)
        if self.poster is not None:
            self.poster.close()
            if self.poster.failures:
                self.notes.append(
                    f"signal webhook: {len(self.poster.failures)} post(s) failed (the result is unaffected): "
                    + "; ".join(self.poster.failures)
                )
        if self.scheduler is not None and self.scheduler.forced:
            self.notes.append(
                "units started without ready prerequisites: " + ", ".join(self.scheduler.forced)
            )

    def _write_allure_static(self) -> None:
        directory = allure.allure_dir(self.config)
        if directory is None:
            return
        allure.write_categories(directory)
        environment = {
            "plan": str(self.settings.plan.source or ""),
            "target": self.settings.target_name,
            "workers": str(self.workers or 1),
            "python": ".".join(map(str, __import__("sys").version_info[:3])),
            "pytest": pytest.__version__,
        }
        environment.update(self.config.stash.get(ENVIRONMENT_KEY, {}))
        allure.write_environment(directory, environment, self.redactor)

    def _write_reports(self, outcome: RunOutcome) -> None:
        assert self.run is not None
        reports = self.settings.reports_dir
        reports.mkdir(parents=True, exist_ok=True)
        document = timeline.timeline_document(self.run, outcome, self.workers or 1, self.background)
        (reports / "timeline.json").write_text(json.dumps(document, indent=1), encoding="utf-8")
        markdown = timeline.timeline_markdown(self.run, outcome, self.background)
        (reports / "timeline.md").write_text(markdown, encoding="utf-8")
        at = utc_now_iso()
        verdicts = {
            name: RecordedVerdict(status.verdict.value, at, status.first_failure)
            for name, status in self.run.teams.items()
            if status.nodeids and status.verdict in RECORDED
        }
        VerdictLog(self.settings.state_dir, self.settings.target_name).record(verdicts)
        if self.check_mode:
            self.check_files = checkreport.write(self.run, reports, self.settings.target_name)
        directory = allure.allure_dir(self.config)
        if directory is not None:
            allure.write_summary(
                directory,
                name="Run summary: team verdicts and timeline",
                outcome=outcome,
                attachments={"Timeline": markdown},
                start=self.started,
                stop=time.time(),
            )

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        run = self.run
        if run is None or not run.active:
            if self.background:
                self._write_background(terminalreporter, None)
            return
        write = terminalreporter.write_line
        terminalreporter.write_sep("=", "hypervisor suite engine: teams")
        for line in timeline.team_table(run):
            write(line)
        missing = [name for name, status in run.teams.items() if status.verdict is Verdict.NOT_IMPLEMENTED]
        if missing:
            write("")
            write("not implemented (no test module): " + ", ".join(f"Team {name}" for name in missing))
        for line in timeline.skipped_checks(run):
            write(line)
        if self.check_mode:
            terminalreporter.write_sep("-", checkreport.SECTION)
            markdown = self.check_files[0] if self.check_files else self.settings.reports_dir / "check.md"
            for line in checkreport.terminal_lines(run, markdown):
                write(line)
            if self.check_files:
                write("full list with diffs: " + ", ".join(str(path) for path in self.check_files))
        if self.background:
            self._write_background(terminalreporter, run)
        terminalreporter.write_sep("-", "Timeline Comparison")
        for line in timeline.comparison_table(run):
            write(line)
        write("")
        for line in timeline.success_metrics(run):
            write(line)
        for note in self.notes:
            write(note)
        if self.check_mode:
            write(checkreport.summary_line(run))
        write(timeline.summary_line(run))
        if self.outcome is not None:
            write(self.outcome.text, bold=True, **OUTCOME_MARKUP[self.outcome.status])

    def _write_background(self, terminalreporter: Any, run: TeamRun | None) -> None:
        terminalreporter.write_sep("-", "Background work")
        for line in timeline.background_table(run, self.background):
            terminalreporter.write_line(line)

    @pytest.hookimpl
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _remaining_hours(settings: EngineSettings) -> dict[str, float]:
    """Each team's estimated hours plus the longest estimated chain after it: the team
    on the longest remaining path goes first when several are ready."""
    plan = settings.plan
    remaining: dict[str, float] = {}
    for name in reversed(plan.topological_order()):
        after = max((remaining[dep] for dep in plan.dependents(name)), default=0.0)
        remaining[name] = plan[name].hours[1] + after
    return remaining
