"""The contract between the engine and the plugins and phase modules that feed it: run modes,
waivers, not-applicable checks, apply fixtures and change counts, defined once.

Everything here is plain data and small functions over pytest's public objects: the targets
plugin writes through these functions, the engine reads through them, and neither spells a
skip reason or a user-property key of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn, Protocol, TypeVar

import pytest

# The runner's modes (apply/ stays free of pytest, so the literal lives there).
from apply.runner import MODES, Mode

F = TypeVar("F", bound=Callable[..., Any])

# Attribute an apply fixture's function carries (pytest copies it onto the fixture definition).
_APPLY_ATTRIBUTE = "hvsuite_apply_fixture"
_CHANGES = "hvsuite_changes"
_WOULD_CHANGE = "hvsuite_would_change"
_NOTICE = "hvsuite_notice"

_WAIVED = "waived: "
_NOT_APPLICABLE = "not applicable: "
_CHECK = "check mode: "
_BLOCKED = "blocked by "


class SkipKind(StrEnum):
    """Why a test was skipped, as the engine counts it."""

    WAIVED = "waived"  # the target's profile cannot provide a capability: not a failure
    # A valid config choice makes the check irrelevant (`not_applicable`): not a failure.
    NOT_APPLICABLE = "not applicable"
    CHECK = "check"  # a dry run (--check) applied nothing, so nothing was verified
    BLOCKED = "blocked"  # a prerequisite team did not finish green
    OTHER = "other"  # any other skip: the team is not complete


MODE_KEY = pytest.StashKey[Mode]()


def set_mode(config: pytest.Config, mode: Mode) -> None:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    config.stash[MODE_KEY] = mode


def mode(config: pytest.Config) -> Mode:
    """The run's mode: ``apply`` unless --check or --verify-only said otherwise."""
    return config.stash.get(MODE_KEY, "apply")


# -- skip reasons ---------------------------------------------------------------------------


def waiver_reason(capability: str, profile: str) -> str:
    return f"{_WAIVED}{capability} (profile {profile})"


def not_applicable_reason(why: str) -> str:
    return f"{_NOT_APPLICABLE}{why}"


def check_reason(detail: str = "not verified, nothing was applied") -> str:
    return f"{_CHECK}{detail}"


def blocked_reason(cause: str) -> str:
    """``cause`` names the root-cause team and test: "Team X (test id)"."""
    return f"{_BLOCKED}{cause}"


_PREFIXES = {
    SkipKind.WAIVED: _WAIVED,
    SkipKind.NOT_APPLICABLE: _NOT_APPLICABLE,
    SkipKind.CHECK: _CHECK,
    SkipKind.BLOCKED: _BLOCKED,
}


def skip_kind(reason: str) -> SkipKind:
    for kind, prefix in _PREFIXES.items():
        if reason.startswith(prefix):
            return kind
    return SkipKind.OTHER


def reason_pattern(kind: SkipKind) -> str:
    """A regular expression matching a whole message that carries a skip reason of ``kind``
    (e.g. Allure's "Skipped: <reason>"), for tools that classify by message."""
    if kind not in _PREFIXES:
        raise ValueError(f"no reason pattern for {kind.value!r} skips")
    return "(?s).*" + re.escape(_PREFIXES[kind]) + ".*"


def waive(item: pytest.Item, capability: str, profile: str) -> None:
    """Skip ``item`` because the profile waives ``capability`` (reported as waived)."""
    item.add_marker(pytest.mark.skip(reason=waiver_reason(capability, profile)))


def not_applicable(reason: str) -> NoReturn:
    """Skip the running test (or fixture) because a valid config choice makes what it checks
    irrelevant, e.g. ``alpha.tls.client_auth = false`` for a check of the client
    certificate. Reported as not applicable; unlike a plain `pytest.skip`, it does not fail
    the team. `reason` says which choice: "alpha.tls.client_auth is off"."""
    # Reported at the caller's line, as a pytest.skip in the test itself would be.
    __tracebackhide__ = True
    pytest.skip(not_applicable_reason(reason))


# -- apply fixtures ---------------------------------------------------------------------------


def apply_fixture(func: F) -> F:
    """Declare a team's apply fixture: module-scoped, run in the run's mode. Under --check it
    is the only fixture of the team module that is set up; checks are then skipped."""
    setattr(func, _APPLY_ATTRIBUTE, True)
    return pytest.fixture(scope="module")(func)  # type: ignore[return-value]


def is_apply_fixture(obj: object) -> bool:
    """Whether ``obj`` (a fixture function or pytest's definition of one) is an apply fixture."""
    return bool(getattr(obj, _APPLY_ATTRIBUTE, False))


# -- what changed ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WouldChange:
    """One op a dry run would run: ``"[host] => op"`` and its redacted diff, if any."""

    op: str
    diff: str | None = None


class _Report(Protocol):
    user_properties: list[tuple[str, object]]


def add_changes(report: _Report, count: int, would_change: Iterable[WouldChange] = ()) -> None:
    """Record on a test report how many ops changed (or would change) during that phase."""
    report.user_properties.append((_CHANGES, int(count)))
    entries = [{"op": entry.op, "diff": entry.diff} for entry in would_change]
    if entries:
        report.user_properties.append((_WOULD_CHANGE, entries))


def changes(report: _Report) -> tuple[int, list[WouldChange]]:
    """(ops changed, ops that would change) recorded on ``report``."""
    count = 0
    would: list[WouldChange] = []
    for key, value in getattr(report, "user_properties", ()) or ():
        if key == _CHANGES and isinstance(value, int):
            count += value
        elif key == _WOULD_CHANGE and isinstance(value, list | tuple):
            for entry in value:
                if isinstance(entry, dict):
                    diff = entry.get("diff")
                    would.append(WouldChange(str(entry.get("op", "")), None if diff is None else str(diff)))
    return count, would


def notice(item: pytest.Item, text: str) -> None:
    """Name on ``item``'s reports something the platform's users made that the check found
    and left alone (a Released volume that holds data, a Service of their own on the pool).
    It is listed with the team's issues and never fails it."""
    item.user_properties.append((_NOTICE, text))


def notices(report: _Report) -> list[str]:
    """The notices recorded on ``report``, in order."""
    return [str(value) for key, value in getattr(report, "user_properties", ()) or () if key == _NOTICE]
