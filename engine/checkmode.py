"""Check mode (``--check``) on the side that runs tests: a dry run of every team.

Registered by the engine plugin in every process that runs tests when
`engine.contract.mode` is "check". For each test:

- a fixture defined in the test's own module (a team module) that is not an apply fixture
  (`engine.contract.is_apply_fixture`) is not set up: its value is `NOT_SET_UP`. A fixture
  of the module that an apply fixture needs (directly or through other fixtures of the
  module) is part of the apply and is set up;
- apply fixtures are set up in the test's own fixture order, whatever comes before them;
  in check mode they compute and record what they would change;
- fixtures of plugins and conftests (settings, target, remote, host, ...) are set up as
  usual;
- the test body never runs: the test is skipped with `engine.contract.check_reason` in the
  call phase;
- an apply fixture that needs another apply fixture may fail on a host that was never
  built (it reads back what an earlier step would have written). Its error does not fail
  the team: its value becomes `Stopped` (so does the value of whatever needs it, which
  then does not run), and the skip reason of every test that needs it adds
  ``fixture 'X' stopped: <error type>: <first line>``. An error of an apply fixture that
  needs no other apply fixture, or of anything it needs, is a real failure, as in a real run.

Public pytest API only: the hooks ``pytest_runtest_setup`` (which test is being set up),
``pytest_fixture_setup`` (a tryfirst implementation that answers for the fixtures it does
not set up, and a wrapper around apply fixtures that turns a dependent one's error into
`Stopped`), ``pytest_pyfunc_call`` (the skip) and ``pytest_runtest_makereport`` (the skip's
location). An implementation of ``pytest_fixture_setup`` that answers for pytest records its
answer where ``request.getfixturevalue`` reads it, ``fixturedef.cached_result`` (value,
``fixturedef.cache_key(request)``, no error), as pytest's own implementation does; it is the
only attribute of a pytest object written here.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from engine import contract
from engine.contract import SkipKind
from engine.run import skip_reason

# Longest error text kept in a "stopped" note.
NOTE_LIMIT = 200


class _NotSetUp:
    """The value of a team fixture that check mode did not set up."""

    def __repr__(self) -> str:
        return "<not set up: check mode>"


NOT_SET_UP: Any = _NotSetUp()


@dataclass(frozen=True)
class Stopped:
    """The value of an apply fixture that stopped in check mode (and of what needs it)."""

    note: str


def stopped_note(name: str, error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [""])[0][:NOTE_LIMIT]
    return f"fixture {name!r} stopped: {type(error).__name__}: {first}"


def _parameters(obj: object) -> list[str]:
    """The argument names of a fixture (pytest keeps the function as ``__wrapped__``)."""
    try:
        return list(inspect.signature(obj).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []


def _own(module: ModuleType, name: str) -> object | None:
    """The module's attribute `name` if the module itself defines it."""
    obj = getattr(module, name, None)
    return obj if getattr(obj, "__module__", None) == module.__name__ else None


def needed_by_apply(module: ModuleType) -> frozenset[str]:
    """Names of the module's own fixtures that its apply fixtures need, transitively."""
    stack = [
        param
        for value in vars(module).values()
        if contract.is_apply_fixture(value)
        for param in _parameters(value)
    ]
    needed: set[str] = set()
    while stack:
        name = stack.pop()
        obj = _own(module, name)
        if name in needed or obj is None:
            continue
        needed.add(name)
        stack.extend(_parameters(obj))
    return frozenset(needed)


def needs_apply(module: ModuleType, argnames: Iterable[str]) -> bool:
    """Whether fixtures named `argnames` include an apply fixture, directly or through the
    module's own fixtures."""
    stack = list(argnames)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if contract.is_apply_fixture(getattr(module, name, None)):
            return True
        obj = _own(module, name)
        if obj is not None:
            stack.extend(_parameters(obj))
    return False


class CheckMode:
    """The hooks of a dry run; see the module docstring."""

    def __init__(self) -> None:
        self.item: pytest.Item | None = None
        self._needed: dict[str, frozenset[str]] = {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.item = item

    def _test_module(self) -> ModuleType | None:
        item = self.item
        return item.module if isinstance(item, pytest.Function) else None

    def _side(self, fixturedef: pytest.FixtureDef[Any]) -> str:
        """Which side of a dry run a fixture is on: "apply" (an apply fixture, or a fixture
        of the test's module one needs), "team" (any other fixture of the test's module: not
        set up) or "other" (a plugin's or conftest's: set up as usual)."""
        func = fixturedef.func
        if contract.is_apply_fixture(func):
            return "apply"
        module = self._test_module()
        if module is None or getattr(func, "__module__", None) != module.__name__:
            return "other"
        if module.__name__ not in self._needed:
            self._needed[module.__name__] = needed_by_apply(module)
        return "apply" if fixturedef.argname in self._needed[module.__name__] else "team"

    def _needs_apply(self, fixturedef: pytest.FixtureDef[Any]) -> bool:
        modules = (sys.modules.get(getattr(fixturedef.func, "__module__", "")), self._test_module())
        return any(module is not None and needs_apply(module, fixturedef.argnames) for module in modules)

    @staticmethod
    def _requirements(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> list[Any]:
        return [request.getfixturevalue(name) for name in fixturedef.argnames if name != "request"]

    @staticmethod
    def _settle(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest, value: Any) -> Any:
        """Answer for pytest: `value` is the fixture's value, as its own implementation would
        record it for ``request.getfixturevalue``."""
        fixturedef.cached_result = (value, fixturedef.cache_key(request), None)  # type: ignore[arg-type]
        return value

    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
        side = self._side(fixturedef)
        if side == "team":
            return self._settle(fixturedef, request, NOT_SET_UP)
        if side == "apply":
            # Needs a fixture that stopped: it stops with it, without running.
            stopped = next(
                (v for v in self._requirements(fixturedef, request) if isinstance(v, Stopped)), None
            )
            if stopped is not None:
                return self._settle(fixturedef, request, stopped)
        return None

    @pytest.hookimpl(wrapper=True, specname="pytest_fixture_setup")
    def pytest_fixture_setup_apply(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        if self._side(fixturedef) != "apply" or not self._needs_apply(fixturedef):
            return (yield)
        # What it needs is set up outside the guard below (pytest does so before this hook;
        # asking again costs nothing): an error there, e.g. a root apply fixture's, stays a
        # real failure of that fixture.
        self._requirements(fixturedef, request)
        try:
            return (yield)
        except Exception as error:
            return self._settle(fixturedef, request, Stopped(stopped_note(fixturedef.argname, error)))

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> None:
        notes = dict.fromkeys(v.note for v in pyfuncitem.funcargs.values() if isinstance(v, Stopped))
        pytest.skip("; ".join([contract.check_reason(), *notes]))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        # A check-mode skip is reported at the test's location, not at this plugin's.
        longrepr = report.longrepr
        if (
            report.skipped
            and isinstance(longrepr, tuple)
            and contract.skip_kind(skip_reason(report)) is SkipKind.CHECK
        ):
            path, line, _ = item.reportinfo()
            report.longrepr = (str(path), (line or 0) + 1, longrepr[2])
        return report
