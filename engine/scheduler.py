"""An xdist scheduler that runs the team graph: a whole team goes to one idle worker once
every prerequisite team is green; independent ready teams run on different workers at once.

Implements xdist's `Scheduling` protocol (``xdist/scheduler/protocol.py``), returned from
``pytest_xdist_make_scheduler``. Two xdist internals it leans on (pinned in requirements):

- A worker runs item *i* only once it has received item *i+1* (it needs ``nextitem`` for
  teardown). Every team is therefore sent followed by the index of a hidden no-op item
  (the *team boundary*, see ``engine.plugin``) that each worker appends to its collection
  after reporting it: the team's last test and its module teardown run at once, and the
  worker then waits on the boundary until it gets the next team or shuts down.
- The controller sees a test's reports before ``mark_test_complete``; so when the last test
  of a team completes, the gate already knows the team's verdict.

What depends on what is not decided here: the `DispatchGate` says which unit a test belongs
to, whether a unit may start and how urgent it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn, Protocol

import pytest
from xdist.remote import Producer
from xdist.report import report_collection_diff
from xdist.workermanage import parse_tx_spec_config


class DispatchGate(Protocol):
    def collection_ready(self, collection: Sequence[str]) -> None:
        """Called once with the verified collection, before anything is dispatched.
        May raise `pytest.UsageError` to refuse the run."""

    def unit_of(self, nodeid: str) -> str:
        """The work unit of a test: its team, or its module for tests outside the plan."""

    def ready(self, unit: str) -> bool:
        """Whether the unit may be dispatched now."""

    def priority(self, unit: str) -> float:
        """Higher runs first among ready units (the remaining critical path)."""

    def lost(self, crashitem: str, nodeids: Sequence[str], worker: str) -> None:
        """A worker died while running `crashitem`; `nodeids` of its unit never ran."""


class DAGScheduling:
    """Dispatch whole units (teams) to idle workers in dependency order."""

    def __init__(
        self, config: pytest.Config, log: Producer | None, gate: DispatchGate, numnodes: int | None = None
    ) -> None:
        self.config = config
        self.numnodes = numnodes if numnodes is not None else len(parse_tx_spec_config(config))
        self.log = log.dagsched if log is not None else Producer("dagsched", enabled=False)
        self.gate = gate
        self.registered_collections: dict[Any, list[str]] = {}
        # Item indices sent to each node and not yet complete (the boundary excluded).
        self.pending: dict[Any, list[int]] = {}
        self.collection: list[str] | None = None
        # Units not dispatched yet, in collection order.
        self.units: dict[str, list[int]] = {}
        self.collection_failed = False
        self.forced: list[str] = []

    # -- the xdist Scheduling protocol -------------------------------------------------

    @property
    def nodes(self) -> list[Any]:
        return list(self.pending)

    @property
    def collection_is_completed(self) -> bool:
        return len(self.registered_collections) >= self.numnodes

    @property
    def tests_finished(self) -> bool:
        if not self.collection_is_completed:
            return False
        if self.collection_failed:
            return True
        if self.collection is None:
            return False
        return not self.units and not any(self.pending.values())

    @property
    def has_pending(self) -> bool:
        return bool(self.units) or any(self.pending.values())

    @property
    def boundary_index(self) -> int:
        assert self.collection is not None
        return len(self.collection)

    def add_node(self, node: Any) -> None:
        assert node not in self.pending
        self.pending[node] = []

    def add_node_collection(self, node: Any, collection: Sequence[str]) -> None:
        assert node in self.pending
        if self.collection is not None and list(collection) != self.collection:
            # A replacement worker collected something else: never give it work.
            first = next(iter(self.registered_collections))
            self.log(report_collection_diff(self.collection, collection, first.gateway.id, node.gateway.id))
            return
        self.registered_collections[node] = list(collection)

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        pending = self.pending.get(node)
        if pending is not None and item_index in pending:
            pending.remove(item_index)
        self._dispatch()

    def mark_test_pending(self, item: str) -> NoReturn:
        raise NotImplementedError("the team scheduler never re-runs a test")

    def remove_pending_tests_from_node(self, node: Any, indices: Sequence[int]) -> NoReturn:
        raise NotImplementedError("the team scheduler never steals tests: a team stays on one worker")

    def remove_node(self, node: Any) -> str | None:
        pending = self.pending.pop(node)
        if not pending:
            return None
        # The worker died mid-team: the rest of the team is not re-run elsewhere (its module
        # fixtures and host state are half applied); it fails and blocks dependents.
        assert self.collection is not None
        crashitem = self.collection[pending[0]]
        self.gate.lost(crashitem, [self.collection[i] for i in pending[1:]], str(node.gateway.id))
        return crashitem

    def schedule(self) -> None:
        assert self.collection_is_completed
        if self.collection is not None:
            self._dispatch()
            return
        if not self._check_same_collection():
            return
        self.collection = list(next(iter(self.registered_collections.values())))
        self.gate.collection_ready(self.collection)
        for index, nodeid in enumerate(self.collection):
            self.units.setdefault(self.gate.unit_of(nodeid), []).append(index)
        self.dispatch()

    def dispatch(self) -> None:
        """Send ready units to idle workers; the gate calls it when a verdict changes
        outside the protocol's own calls (after a worker crash)."""
        self._dispatch()

    # -- internals ---------------------------------------------------------------------

    def _check_same_collection(self) -> bool:
        (first, first_collection), *others = self.registered_collections.items()
        same = True
        for node, collection in others:
            if collection != first_collection:
                same = False
                message = report_collection_diff(
                    first_collection, collection, first.gateway.id, node.gateway.id
                )
                report = pytest.CollectReport(
                    node.gateway.id,
                    "failed",
                    longrepr=f"collections differ between workers:\n{message}",
                    result=[],
                )
                self.config.hook.pytest_collectreport(report=report)
        if not same:
            self.collection_failed = True
        return same

    def _idle_nodes(self) -> list[Any]:
        return [node for node, pending in self.pending.items() if not pending and not node.shutting_down]

    def _next_unit(self) -> str | None:
        ready = [unit for unit in self.units if self.gate.ready(unit)]
        if not ready:
            return None
        # max() keeps the first of equals: collection order breaks ties.
        return max(ready, key=self.gate.priority)

    def _dispatch(self) -> None:
        if self.collection is None:
            return
        for node in self._idle_nodes():
            unit = self._next_unit()
            if unit is None:
                break
            self._send(node, unit)
        busy = any(self.pending.values())
        if self.units and not busy and self._idle_nodes():
            # Nothing runs and nothing is ready: a prerequisite can never settle (a bug in
            # the gate). Run the most urgent unit anyway; its setup check blocks its tests
            # with a reason instead of the run hanging.
            unit = max(self.units, key=self.gate.priority)
            self.forced.append(unit)
            self.log("no unit is ready and no worker is busy; forcing", unit)
            self._send(self._idle_nodes()[0], unit)

    def _send(self, node: Any, unit: str) -> None:
        indices = self.units.pop(unit)
        self.pending[node] = list(indices)
        self.log("sending", unit, "to", node.gateway.id)
        node.send_runtest_some([*indices, self.boundary_index])
