"""The controller's account of one run: which tests belong to which team, each team's
verdict as reports arrive, and who is blocked by whom.

Skips are told apart by `engine.contract.skip_kind`. A team is green when every report of
every one of its tests passed or was skipped as a waiver or as not applicable
(`contract.not_applicable`: a config choice makes the check irrelevant), and at least one
test passed; a team whose every test was skipped that way is "waived" ("not applicable" when
none of them was waived): nothing of it failed and nothing was verified, so it unblocks its
dependents like green but is not green. In a dry run
(``--check``) every check is skipped as a check-mode skip: such a skip is not a failure
either, and a team with at least one of them (and no failure) is "checked", which unblocks
its dependents like green but is not green. Any other skip, a failure or an error makes it
not green; its transitive dependents are blocked at once (not when their turn comes), with
`contract.blocked_reason` naming the root-cause team and its first failing test. Pure
bookkeeping: no pytest hooks, no I/O, so it is unit-testable with fake reports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from engine import contract
from engine.contract import SkipKind, WouldChange
from engine.plan import Plan
from engine.state import RecordedVerdict, TeamGate, Verdict

NOT_VERIFIED_WAIVED = "not verified: every check was waived"
NOT_VERIFIED_NOT_APPLICABLE = "not verified: every check was not applicable"


class ReportLike(Protocol):
    nodeid: str
    when: str
    outcome: str
    longrepr: object
    start: float
    stop: float
    user_properties: list[tuple[str, object]]


def skip_reason(report: ReportLike) -> str:
    """The reason of a skipped report ("Skipped: " prefix removed)."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
    return text.removeprefix("Skipped: ")


def report_worker(report: object) -> str:
    node = getattr(report, "node", None)
    gateway = getattr(node, "gateway", None)
    return str(getattr(gateway, "id", None) or getattr(report, "worker_id", None) or "main")


def nodeid_file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@dataclass
class TeamStatus:
    name: str
    phase: int
    verdict: Verdict = Verdict.PENDING
    nodeids: list[str] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)
    # Root cause of a block: "Team X (test id)".
    blocked_by: str | None = None
    first_failure: str | None = None
    failures: list[str] = field(default_factory=list)
    waivers: list[str] = field(default_factory=list)
    # Tests skipped as waived, by node id (all of them: the team is "waived").
    waived_tests: set[str] = field(default_factory=set)
    # Tests skipped as not applicable: node id -> reason, in order.
    not_applicable: dict[str, str] = field(default_factory=dict)
    # Tests skipped in check mode (a dry run): "<test id>: <reason>".
    checked: list[str] = field(default_factory=list)
    # Ops that would change (--check), in order.
    would_change: list[WouldChange] = field(default_factory=list)
    # What the checks found of the platform's users' own and left alone (engine.notice).
    notices: list[str] = field(default_factory=list)
    # Set when a failure is seen; the verdict is final when the last test finishes.
    failing: bool = False
    start: float | None = None
    end: float | None = None
    worker: str | None = None
    changes: int = 0
    recorded: RecordedVerdict | None = None
    # Set when the verdict first became known (for live signals).
    announced: bool = False

    @property
    def duration(self) -> float:
        if self.start is None or self.end is None:
            return 0.0
        return max(0.0, self.end - self.start)

    @property
    def not_applicable_entries(self) -> list[str]:
        """The not-applicable checks as "<test id>: <reason>" (the form of `waivers`)."""
        return [f"{nodeid}: {reason}" for nodeid, reason in self.not_applicable.items()]

    @property
    def unverified(self) -> str | None:
        """Why a team that did not fail verified nothing (None when it did, or failed)."""
        if self.verdict is Verdict.NOT_APPLICABLE:
            return NOT_VERIFIED_NOT_APPLICABLE
        if self.verdict is Verdict.WAIVED:
            return NOT_VERIFIED_WAIVED + (" or not applicable" if self.not_applicable else "")
        return None

    @property
    def issues(self) -> list[str]:
        """Failures one by one; waivers counted per reason (the full list is in the timeline);
        not-applicable checks per reason with their names (a reason is a config choice,
        usually of one or two checks, and which checks it turned off is worth reading)."""
        reasons = Counter(entry.split(": ", 1)[1] for entry in self.waivers)
        inapplicable: dict[str, list[str]] = {}
        for nodeid, reason in self.not_applicable.items():
            inapplicable.setdefault(reason, []).append(nodeid.split("::", 1)[-1])
        unverified = self.unverified
        return [
            *([unverified] if unverified else []),
            *self.failures,
            *(f"{count} check(s) {reason}" for reason, count in reasons.items()),
            *(f"{reason} ({', '.join(names)})" for reason, names in inapplicable.items()),
            *(f"noticed: {text}" for text in self.notices),
        ]


class TeamRun:
    """Team verdicts for one run, fed with test reports by the controller."""

    def __init__(
        self,
        plan: Plan,
        nodeids: Iterable[str],
        module_of_team: dict[str, str],
        implemented: set[str],
        recorded_green: dict[str, RecordedVerdict] | None = None,
        *,
        check_mode: bool = False,
    ) -> None:
        """`module_of_team`: team -> its module as it appears in node ids (path relative to
        rootdir); `implemented`: teams whose module file exists; `recorded_green`: teams not
        selected that count green from an earlier run (--resume); `check_mode`: a dry run
        (--check), where a team that did not fail is "checked" even if every test of it
        was waived (nothing of it was verified)."""
        self.plan = plan
        self.check_mode = check_mode
        self.teams: dict[str, TeamStatus] = {t.name: TeamStatus(t.name, t.phase) for t in plan.teams}
        self._team_of_file = {module: team for team, module in module_of_team.items()}
        self._team_of_nodeid: dict[str, str] = {}
        for nodeid in nodeids:
            team = self._team_of_file.get(nodeid_file(nodeid))
            if team is not None:
                self.teams[team].nodeids.append(nodeid)
                self._team_of_nodeid[nodeid] = team
        # Verdicts settled in the order they became known; the plugin drains it for signals.
        self.settled_order: list[str] = []
        recorded_green = recorded_green or {}
        for team in plan.topological_order():
            status = self.teams[team]
            if status.nodeids:
                continue
            if team not in implemented:
                self._settle(team, Verdict.NOT_IMPLEMENTED)
            elif team in recorded_green:
                status.recorded = recorded_green[team]
                self._settle(team, Verdict.RECORDED_GREEN)
            else:
                self._settle(team, Verdict.NOT_SELECTED)
        for team in plan.topological_order():
            verdict = self.teams[team].verdict
            if verdict in (Verdict.NOT_IMPLEMENTED, Verdict.NOT_SELECTED):
                self._block_descendants(team, f"Team {team} ({verdict.value})")

    @property
    def active(self) -> bool:
        """Whether any team test was collected (otherwise the engine stays out of the way)."""
        return bool(self._team_of_nodeid)

    def team_of(self, nodeid: str) -> str | None:
        return self._team_of_nodeid.get(nodeid)

    def collected_teams(self) -> list[str]:
        return [name for name in self.plan.topological_order() if self.teams[name].nodeids]

    def gates(self) -> dict[str, TeamGate]:
        gates = {}
        for name, status in self.teams.items():
            blocked_by = status.blocked_by
            if status.verdict is Verdict.FAILED or (status.failing and not status.verdict.settled):
                blocked_by = f"Team {name} ({status.first_failure})"
            gates[name] = TeamGate(status.verdict, blocked_by)
        return gates

    def ready(self, team: str) -> bool:
        """Whether `team` may be dispatched now: every prerequisite counts green, or the team
        is already blocked (its tests then only record the block)."""
        status = self.teams[team]
        if status.verdict is Verdict.BLOCKED:
            return True
        return all(self.teams[req].verdict.unblocks for req in self.plan[team].requires)

    def _settle(self, team: str, verdict: Verdict) -> None:
        status = self.teams[team]
        status.verdict = verdict
        self.settled_order.append(team)

    def _block_descendants(self, root: str, cause: str) -> list[str]:
        newly = []
        below = self.plan.descendants(root)
        for name in self.plan.topological_order():
            if name in below:
                status = self.teams[name]
                if status.verdict.settled:
                    continue
                status.blocked_by = cause
                self._settle(name, Verdict.BLOCKED)
                newly.append(name)
        return newly

    def add_report(self, report: ReportLike) -> None:
        team = self._team_of_nodeid.get(report.nodeid)
        if team is None:
            return
        status = self.teams[team]
        start = getattr(report, "start", None)
        stop = getattr(report, "stop", None)
        if start is not None:
            status.start = start if status.start is None else min(status.start, start)
        if stop is not None:
            status.end = stop if status.end is None else max(status.end, stop)
        if status.worker is None:
            status.worker = report_worker(report)
        count, would_change = contract.changes(report)
        status.changes += count
        status.would_change.extend(would_change)
        # Each phase's report carries the item's properties so far: keep each notice once.
        status.notices.extend(text for text in contract.notices(report) if text not in status.notices)
        problem: str | None = None
        if report.outcome == "failed":
            problem = report.nodeid if report.when in ("call", "???") else f"{report.nodeid} ({report.when})"
        elif report.outcome == "skipped":
            reason = skip_reason(report)
            kind = contract.skip_kind(reason)
            if kind is SkipKind.WAIVED:
                status.waivers.append(f"{report.nodeid}: {reason}")
                status.waived_tests.add(report.nodeid)
            elif kind is SkipKind.NOT_APPLICABLE:
                status.not_applicable[report.nodeid] = reason
            elif kind is SkipKind.CHECK:
                status.checked.append(f"{report.nodeid}: {reason}")
            elif kind is SkipKind.BLOCKED and status.verdict is Verdict.BLOCKED:
                pass
            else:
                problem = f"{report.nodeid} (skipped: {reason})"
        if problem is not None and status.verdict is not Verdict.BLOCKED:
            status.failures.append(problem)
            if not status.failing:
                status.failing = True
                status.first_failure = report.nodeid
                self._block_descendants(team, f"Team {team} ({report.nodeid})")
        if report.when in ("teardown", "???"):
            status.finished.add(report.nodeid)
            if not status.verdict.settled and status.finished >= set(status.nodeids):
                self._settle(team, self._finished_verdict(status))

    def _finished_verdict(self, status: TeamStatus) -> Verdict:
        if status.failing:
            return Verdict.FAILED
        if status.checked or self.check_mode:
            return Verdict.CHECKED
        if status.waived_tests.union(status.not_applicable) >= set(status.nodeids):
            return Verdict.WAIVED if status.waived_tests else Verdict.NOT_APPLICABLE
        return Verdict.GREEN

    def stop_unfinished(self) -> list[str]:
        """At the end of a run: teams collected but never finished are "not run"."""
        stopped = []
        for name in self.plan.topological_order():
            status = self.teams[name]
            if status.nodeids and not status.verdict.settled:
                self._settle(name, Verdict.FAILED if status.failing else Verdict.NOT_RUN)
                stopped.append(name)
        return stopped

    def take_settled(self) -> list[str]:
        """Teams whose verdict became known since the last call, in order."""
        settled, self.settled_order = self.settled_order, []
        return settled

    def next_teams(self, team: str) -> list[str]:
        """Dependents of `team` that can start now that it unblocks them (green, waived, not
        applicable or checked)."""
        return [
            dep
            for dep in self.plan.dependents(team)
            if self.teams[dep].nodeids
            and not self.teams[dep].verdict.settled
            and all(self.teams[req].verdict.unblocks for req in self.plan[dep].requires)
        ]
