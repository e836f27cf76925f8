"""Collection-side work, done wherever tests are collected (each xdist worker, or the one
process without xdist): team markers and Allure labels, ``--teams`` selection, the check
that every selected team's prerequisites are verified in this run (or, with ``--resume``,
were recorded green), topological order, the hidden team boundary, and the gate that blocks
a team's tests before their first setup when a prerequisite is not green.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from engine import allure, contract
from engine.config import EngineSettings
from engine.state import RecordedVerdict, TeamGate, Verdict

BOUNDARY_NAME = "engine-team-boundary"

# Verification tiers, cheapest first. A check's tier is its closest "smoke" or "full" marker
# (its own before its class's and module's); a check with neither is "full", so only what is
# declared cheap and read-only runs in a smoke pass.
TIERS = ("smoke", "full")


def tier_of(item: pytest.Item) -> str:
    return next((mark.name for mark in item.iter_markers() if mark.name in TIERS), "full")


class TeamBoundary(pytest.Item):
    """A no-op item each worker appends after reporting its collection; the scheduler sends
    it after every team so the team's last test (and its module teardown) run at once."""

    def runtest(self) -> None:  # never called: short-circuited in pytest_runtest_protocol
        pass

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, BOUNDARY_NAME


def selection_problems(
    settings: EngineSettings,
    selected: Counter[str],
    deselected: Counter[str],
    recorded: dict[str, RecordedVerdict],
) -> list[str]:
    """Why this selection cannot run: a selected team needs a prerequisite that is neither
    fully selected, nor (with --resume) recorded green, nor missing from the suite."""
    plan = settings.plan
    problems = []
    for team in plan.topological_order():
        if not selected[team]:
            continue
        for req in plan[team].requires:
            if req not in settings.implemented() or (selected[req] and not deselected[req]):
                continue
            record = recorded.get(req)
            if settings.resume and record is not None and record.verdict == Verdict.GREEN.value:
                continue
            state = (
                f"partly selected ({selected[req]} of {selected[req] + deselected[req]} tests)"
                if selected[req]
                else "not selected"
            )
            if record is None:
                history = f"no recorded run on target {settings.target_name!r}"
            else:
                history = f"last recorded {record.verdict} at {record.at}"
            hint = "select it too, use --teams to pull prerequisites in"
            if record is not None and record.verdict == Verdict.GREEN.value:
                hint += ", or --resume to count its recorded green run"
            elif record is not None and record.verdict in (Verdict.WAIVED, Verdict.NOT_APPLICABLE):
                hint += f" (--resume counts only green: a {record.verdict} team verified nothing)"
            problems.append(f"Team {team} needs Team {req}, which is {state} ({history}); {hint}")
    return problems


class TeamCollector:
    """Hooks of the collecting process. `gates` returns the current team gates (from the
    controller in memory, or from the shared state file on an xdist worker); `collected`
    receives the final node ids and the selection problems."""

    def __init__(
        self,
        config: pytest.Config,
        settings: EngineSettings,
        gates: Callable[[], dict[str, TeamGate]],
        collected: Callable[[Sequence[str], list[str]], None],
        *,
        append_boundary: bool,
    ) -> None:
        self.config = config
        self.settings = settings
        self.gates = gates
        self.collected = collected
        self.append_boundary = append_boundary
        self.deselected: Counter[str] = Counter()
        # Checks left out by --tier: their team still counts as fully selected.
        self.outside_tier: set[str] = set()
        # Per team: None = may run, else the skip reason for all its tests.
        self.decisions: dict[str, str | None] = {}

    def team_of(self, item: pytest.Item) -> str | None:
        return self.settings.team_of_nodeid(item.nodeid)

    @pytest.hookimpl
    def pytest_deselected(self, items: Sequence[pytest.Item]) -> None:
        for item in items:
            team = self.team_of(item)
            if team is not None and item.nodeid not in self.outside_tier:
                self.deselected[team] += 1

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        plan = self.settings.plan
        recorded = self.settings.recorded()
        wanted = self.settings.wanted_teams(recorded)
        if wanted is not None:
            keep = [item for item in items if self.team_of(item) in wanted]
            dropped = [item for item in items if self.team_of(item) not in wanted]
            if dropped:
                config.hook.pytest_deselected(items=dropped)
                items[:] = keep
        if self.settings.tier != "full":
            rank = TIERS.index(self.settings.tier)
            above = [item for item in items if self.team_of(item) and TIERS.index(tier_of(item)) > rank]
            if above:
                self.outside_tier.update(item.nodeid for item in above)
                config.hook.pytest_deselected(items=above)
                items[:] = [item for item in items if item.nodeid not in self.outside_tier]
        selected: Counter[str] = Counter()
        problems: list[str] = []
        for item in items:
            team = self.team_of(item)
            if team is None:
                continue
            selected[team] += 1
            spec = plan[team]
            task = item.get_closest_marker("task")
            if task is not None:
                name = task.args[0] if task.args else None
                if spec.tasks and name not in spec.tasks:
                    problems.append(
                        f"{item.nodeid}: task {name!r} is not a task of Team {team} in the plan "
                        f"({', '.join(spec.tasks)}); fix the marker or add the task to plan.toml"
                    )
            allure.add_plan_labels(item, spec.phase, team)
            if spec.requires and item.get_closest_marker("dependency") is None:
                # A test's own dependency marker hides this one from pytest-dependency; the
                # engine's own gate (pytest_runtest_setup below) blocks it either way.
                item.add_marker(
                    pytest.mark.dependency(depends=[f"team:{req}" for req in spec.requires], scope="session")
                )
        tierless = {self.settings.team_of_nodeid(nodeid) for nodeid in self.outside_tier} - set(selected)
        problems.extend(
            f"Team {team} has no check in tier {self.settings.tier!r}; mark its cheap read-only checks smoke"
            for team in sorted(tierless)
        )
        problems.extend(selection_problems(self.settings, selected, self.deselected, recorded))
        order = {name: index for index, name in enumerate(plan.topological_order())}
        # Stable sort: tests outside the plan first, then teams in dependency order, each
        # team's tests in their collected order.
        items.sort(key=lambda item: -1 if self.team_of(item) is None else order[self.team_of(item)])  # type: ignore[index]
        self.collected([item.nodeid for item in items], problems)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # trylast: after xdist's worker has sent its collection, so the boundary's index is
        # one past the collection the controller knows.
        if self.append_boundary:
            session.items.append(TeamBoundary.from_parent(session, name=BOUNDARY_NAME))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        if isinstance(item, TeamBoundary):
            allure.forget_test(self.config, item)
            return True
        return None

    def _decide(self, team: str) -> str | None:
        gates = self.gates()
        own = gates.get(team)
        if own is not None and own.verdict is Verdict.BLOCKED and own.blocked_by:
            return contract.blocked_reason(own.blocked_by)
        for req in self.settings.plan[team].requires:
            gate = gates.get(req)
            if gate is None or not gate.verdict.unblocks:
                cause = gate.blocked_by if gate is not None and gate.blocked_by else None
                if cause is None:
                    state = gate.verdict.value if gate is not None else "unknown"
                    cause = f"Team {req} ({'not finished' if state == 'pending' else state})"
                return contract.blocked_reason(cause)
        return None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        team = self.team_of(item)
        if team is None:
            return
        if team not in self.decisions:
            # Decided once, before the team's first setup: a team is dispatched only after
            # its prerequisites settled, so their verdicts cannot change while it runs.
            self.decisions[team] = self._decide(team)
            if self.decisions[team] is None:
                _register_prerequisites(item, self.settings.plan[team].requires)
        reason = self.decisions[team]
        if reason is not None:
            # Reported at the test's own location, as pytest does for skip markers.
            raise pytest.skip.Exception(reason, _use_item_location=True)


def _register_prerequisites(item: pytest.Item, requires: Sequence[str]) -> None:
    """Record green prerequisite teams in pytest-dependency's session manager, so its own
    ``depends=["team:X"]`` checks hold on a worker that never ran team X."""
    try:
        from pytest_dependency import DependencyItemStatus, DependencyManager
    except ImportError:  # the plugin is optional; the engine's gate does the blocking
        return
    manager = DependencyManager.getManager(item, scope="session")
    if manager is None:
        return
    for req in requires:
        status = DependencyItemStatus()
        status.results = dict.fromkeys(DependencyItemStatus.Phases, "passed")
        manager.results[f"team:{req}"] = status
