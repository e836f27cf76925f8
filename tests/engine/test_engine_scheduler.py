"""The DAG scheduler with fake workers (no processes), and team verdict bookkeeping with
fake reports, in the manner of xdist's own testing/test_dsession.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine import contract
from engine.contract import WouldChange
from engine.plan import plan_from_data
from engine.run import TeamRun
from engine.scheduler import DAGScheduling
from engine.state import Verdict

PLAN = plan_from_data(
    {
        "team": [
            {"name": "A", "phase": 1, "requires": [], "hours": [1, 1], "module": "test_a.py"},
            {"name": "B", "phase": 2, "requires": ["A"], "hours": [1, 1], "module": "test_b.py"},
            {"name": "C", "phase": 2, "requires": ["A"], "hours": [1, 5], "module": "test_c.py"},
            {"name": "D", "phase": 3, "requires": ["B", "C"], "hours": [1, 1], "module": "test_d.py"},
            {"name": "E", "phase": 3, "requires": ["C"], "hours": [1, 1], "module": "test_e.py"},
        ]
    },
    Path("."),
)
MODULES = {t.name: t.module for t in PLAN.teams}
COLLECTION = [f"test_{t}.py::test_{i}" for t in "abcde" for i in (1, 2)] + ["test_other.py::test_x"]


@dataclass
class Gateway:
    id: str


@dataclass
class FakeNode:
    id: str
    sent: list[list[int]] = field(default_factory=list)
    shutting_down: bool = False

    def __post_init__(self) -> None:
        self.gateway = Gateway(self.id)

    def send_runtest_some(self, indices: Sequence[int]) -> None:
        self.sent.append(list(indices))

    def __hash__(self) -> int:
        return hash(self.id)


@dataclass
class Report:
    nodeid: str
    when: str
    outcome: str = "passed"
    longrepr: object = None
    start: float = 0.0
    stop: float = 0.0
    user_properties: list[tuple[str, object]] = field(default_factory=list)


class Gate:
    """The controller's gate reduced to a TeamRun."""

    def __init__(self, implemented: set[str] | None = None) -> None:
        self.implemented = implemented if implemented is not None else set(MODULES)
        self.run: TeamRun | None = None
        self.lost_calls: list[tuple[str, list[str], str]] = []

    def collection_ready(self, collection: Sequence[str]) -> None:
        self.run = TeamRun(PLAN, collection, MODULES, self.implemented)

    def unit_of(self, nodeid: str) -> str:
        assert self.run is not None
        return self.run.team_of(nodeid) or nodeid.split("::")[0]

    def ready(self, unit: str) -> bool:
        assert self.run is not None
        return unit not in self.run.teams or self.run.ready(unit)

    def priority(self, unit: str) -> float:
        return PLAN[unit].hours[1] if unit in PLAN else 0.0

    def lost(self, crashitem: str, nodeids: Sequence[str], worker: str) -> None:
        self.lost_calls.append((crashitem, list(nodeids), worker))


class FakeConfig:
    def __init__(self) -> None:
        self.collect_reports: list[Any] = []
        outer = self

        class Hook:
            def pytest_collectreport(self, report: Any) -> None:
                outer.collect_reports.append(report)

        self.hook = Hook()


def make(nodes: int = 2, implemented: set[str] | None = None) -> tuple[DAGScheduling, Gate, list[FakeNode]]:
    gate = Gate(implemented)
    sched = DAGScheduling(FakeConfig(), None, gate, numnodes=nodes)  # type: ignore[arg-type]
    workers = [FakeNode(f"gw{i}") for i in range(nodes)]
    for node in workers:
        sched.add_node(node)
        sched.add_node_collection(node, COLLECTION)
    sched.schedule()
    return sched, gate, workers


def names(indices: list[int]) -> list[str]:
    return [COLLECTION[i] if i < len(COLLECTION) else "<boundary>" for i in indices]


def sends_of(nodeid: str, *nodes: FakeNode) -> int:
    """How many times ``nodeid`` was sent to any of ``nodes``."""
    return sum(names(batch).count(nodeid) for node in nodes for batch in node.sent)


def finish(sched: DAGScheduling, gate: Gate, node: FakeNode, outcome: str = "passed") -> None:
    """Run every pending test of `node`: reports first, then completion (as xdist does)."""
    assert gate.run is not None
    for index in list(sched.pending[node]):
        nodeid = COLLECTION[index]
        for when in ("setup", "call", "teardown"):
            gate.run.add_report(Report(nodeid, when, outcome if when == "call" else "passed"))
        sched.mark_test_complete(node, index)


def test_first_dispatch_sends_whole_units_followed_by_the_boundary() -> None:
    sched, _, (gw0, gw1) = make()
    # A is the only ready team; the loose module goes to the other worker.
    assert names(gw0.sent[0]) == ["test_a.py::test_1", "test_a.py::test_2", "<boundary>"]
    assert names(gw1.sent[0]) == ["test_other.py::test_x", "<boundary>"]
    assert not sched.tests_finished and sched.has_pending


def test_dependents_start_after_prerequisites_and_run_in_parallel() -> None:
    sched, gate, (gw0, gw1) = make()
    finish(sched, gate, gw1)
    assert len(gw1.sent) == 1  # nothing else ready while A runs
    finish(sched, gate, gw0)
    # C first (longest estimate), B on the other idle worker.
    sent = [names(node.sent[-1])[0] for node in (gw0, gw1)]
    assert sorted(sent) == ["test_b.py::test_1", "test_c.py::test_1"]
    assert sent[0] == "test_c.py::test_1"


def test_failure_blocks_dependents_at_once_and_independent_teams_run() -> None:
    sched, gate, (gw0, gw1) = make()
    finish(sched, gate, gw1)
    finish(sched, gate, gw0)
    c_node = gw0  # C went to gw0 (higher priority)
    b_node = gw1
    finish(sched, gate, b_node, outcome="failed")
    assert gate.run is not None
    assert gate.run.teams["B"].verdict is Verdict.FAILED
    assert gate.run.teams["D"].verdict is Verdict.BLOCKED
    assert gate.run.teams["D"].blocked_by == "Team B (test_b.py::test_1)"
    # D is dispatched (to record its block) while C still runs; E waits for C.
    assert names(b_node.sent[-1])[0] == "test_d.py::test_1"
    finish(sched, gate, b_node)
    assert sends_of("test_e.py::test_1", gw0, gw1) == 0, "E was dispatched before C finished"
    finish(sched, gate, c_node)
    # Once C is done, E goes to exactly one worker, whole.
    assert sends_of("test_e.py::test_1", gw0, gw1) == 1
    e_node = next(node for node in (gw0, gw1) if names(node.sent[-1])[0] == "test_e.py::test_1")
    assert names(e_node.sent[-1]) == ["test_e.py::test_1", "test_e.py::test_2", "<boundary>"]
    for node in (gw0, gw1):
        finish(sched, gate, node)
    assert sched.tests_finished
    assert gate.run.teams["E"].verdict is Verdict.GREEN


def test_not_implemented_team_blocks_its_dependents() -> None:
    collection_without_c = [n for n in COLLECTION if not n.startswith("test_c.py")]
    run = TeamRun(PLAN, collection_without_c, MODULES, set(MODULES) - {"C"})
    assert run.teams["C"].verdict is Verdict.NOT_IMPLEMENTED
    assert run.teams["D"].blocked_by == "Team C (not implemented)"
    assert run.teams["E"].verdict is Verdict.BLOCKED
    assert run.teams["B"].verdict is Verdict.PENDING
    assert not run.ready("B")  # waits for A


def skipped(nodeid: str, when: str, reason: str) -> Report:
    return Report(nodeid, when, "skipped", ("x", 1, f"Skipped: {reason}"))


KVM = contract.waiver_reason("kvm", "scratch")


def test_a_waiver_beside_a_pass_is_green_and_other_skip_is_not() -> None:
    run = TeamRun(PLAN, COLLECTION, MODULES, set(MODULES))
    for nodeid in ("test_a.py::test_1", "test_a.py::test_2"):
        run.add_report(Report(nodeid, "setup"))
        run.add_report(skipped(nodeid, "call", KVM) if nodeid.endswith("1") else Report(nodeid, "call"))
        run.add_report(Report(nodeid, "teardown"))
    assert run.teams["A"].verdict is Verdict.GREEN
    assert run.teams["A"].waivers == [f"test_a.py::test_1: {KVM}"]
    assert run.teams["A"].issues == [f"1 check(s) {KVM}"]
    run.add_report(skipped("test_b.py::test_1", "setup", "no network"))
    assert run.teams["B"].failing and run.teams["D"].verdict is Verdict.BLOCKED


def test_a_team_with_every_test_waived_is_waived_and_unblocks_its_dependents() -> None:
    run = TeamRun(PLAN, COLLECTION, MODULES, set(MODULES))
    run.add_report(skipped("test_a.py::test_1", "setup", KVM))
    run.add_report(Report("test_a.py::test_1", "teardown"))
    assert run.teams["A"].verdict is Verdict.PENDING  # test_2 still to come
    run.add_report(Report("test_a.py::test_2", "setup"))
    run.add_report(skipped("test_a.py::test_2", "call", contract.waiver_reason("devmapper", "scratch")))
    run.add_report(Report("test_a.py::test_2", "teardown"))
    status = run.teams["A"]
    assert status.verdict is Verdict.WAIVED and not status.verdict.counts_green
    assert status.issues[0].startswith("not verified")
    assert run.ready("B") and run.ready("C")
    assert run.next_teams("A") == ["B", "C"]
    assert run.gates()["A"].verdict is Verdict.WAIVED


def test_a_blocked_reason_counts_only_for_a_blocked_team() -> None:
    run = TeamRun(PLAN, COLLECTION, MODULES, set(MODULES))
    run.add_report(skipped("test_a.py::test_1", "setup", contract.blocked_reason("Team Z (x)")))
    assert run.teams["A"].failing and run.teams["B"].verdict is Verdict.BLOCKED
    assert run.teams["B"].blocked_by == "Team A (test_a.py::test_1)"
    run.add_report(
        skipped("test_b.py::test_1", "setup", contract.blocked_reason("Team A (test_a.py::test_1)"))
    )
    assert not run.teams["B"].failures


def test_changes_are_summed_per_team() -> None:
    run = TeamRun(PLAN, COLLECTION, MODULES, set(MODULES))
    setup = Report("test_a.py::test_1", "setup")
    contract.add_changes(setup, 3)
    call = Report("test_a.py::test_2", "call", user_properties=[("other", 9)])
    contract.add_changes(call, 2, [WouldChange("[h] => service a")])
    run.add_report(setup)
    run.add_report(call)
    assert run.teams["A"].changes == 5
    assert run.teams["A"].would_change == [WouldChange("[h] => service a")]


def test_worker_crash_reports_lost_tests_and_returns_the_crash_item() -> None:
    sched, gate, (gw0, _) = make()
    crashitem = sched.remove_node(gw0)
    assert crashitem == "test_a.py::test_1"
    assert gate.lost_calls == [("test_a.py::test_1", ["test_a.py::test_2"], "gw0")]


def test_idle_node_removed_at_shutdown_has_no_crash_item() -> None:
    sched, gate, (_, gw1) = make()
    finish(sched, gate, gw1)
    assert sched.remove_node(gw1) is None


def test_different_collections_fail_the_run() -> None:
    gate = Gate()
    config = FakeConfig()
    sched = DAGScheduling(config, None, gate, numnodes=2)  # type: ignore[arg-type]
    gw0, gw1 = FakeNode("gw0"), FakeNode("gw1")
    for node, collection in ((gw0, COLLECTION), (gw1, COLLECTION[:-1])):
        sched.add_node(node)
        sched.add_node_collection(node, collection)
    sched.schedule()
    assert sched.tests_finished
    assert not gw0.sent and not gw1.sent
    assert len(config.collect_reports) == 1 and config.collect_reports[0].failed


def test_a_stuck_graph_is_forced_rather_than_hanging() -> None:
    class NeverReady(Gate):
        def ready(self, unit: str) -> bool:
            return False

    gate = NeverReady()
    sched = DAGScheduling(FakeConfig(), None, gate, numnodes=1)  # type: ignore[arg-type]
    node = FakeNode("gw0")
    sched.add_node(node)
    sched.add_node_collection(node, COLLECTION)
    sched.schedule()
    assert sched.forced and len(node.sent) == 1


def test_the_scheduler_never_steals_or_reruns() -> None:
    sched, _, (gw0, _) = make()
    with pytest.raises(NotImplementedError):
        sched.remove_pending_tests_from_node(gw0, [0])
    with pytest.raises(NotImplementedError):
        sched.mark_test_pending("test_a.py::test_1")
