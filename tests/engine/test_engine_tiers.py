"""Verification tiers: `--tier smoke` runs only the checks marked smoke, a team keeps its
verdict from them, and its dependents still count it as fully selected."""

from __future__ import annotations

import json

import pytest
from synthetic import run, timeline, write_suite

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("engine_env")

CHAIN = {"Alpha": (1, []), "Bravo": (2, ["Alpha"])}


def module(team: str, *, module_tier: str | None, checks: dict[str, str | None]) -> str:
    """A team module whose checks carry the given tier marker (None: no marker of their own)
    and record that they ran."""
    out = ["import pytest", "from stamping import stamp", ""]
    if module_tier:
        out += [f"pytestmark = pytest.mark.{module_tier}", ""]
    for name, tier in checks.items():
        if tier:
            out.append(f"@pytest.mark.{tier}")
        out += ['@pytest.mark.task("Main task")', f"def {name}():", f"    stamp({team!r}, {name!r})", ""]
    return "\n".join(out)


def ran(pytester: pytest.Pytester) -> set[str]:
    path = pytester.path / "stamps.jsonl"
    if not path.exists():
        return set()
    return {json.loads(line)["test"] for line in path.read_text().splitlines()}


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_a_smoke_pass_runs_the_smoke_checks_only_and_keeps_verdicts(
    pytester: pytest.Pytester, workers: list[str]
) -> None:
    write_suite(
        pytester,
        CHAIN,
        {
            "Alpha": module("Alpha", module_tier="smoke", checks={"test_read": None, "test_drill": "full"}),
            "Bravo": module("Bravo", module_tier=None, checks={"test_up": "smoke", "test_traffic": None}),
        },
    )
    result = run(pytester, "--tier", "smoke", *workers)
    assert result.parseoutcomes()["passed"] == 2
    assert ran(pytester) == {"test_read", "test_up"}
    teams = timeline(pytester)
    assert teams["Alpha"]["outcome"] == teams["Bravo"]["outcome"] == "green"


def test_the_full_tier_is_the_default_and_runs_every_check(pytester: pytest.Pytester) -> None:
    write_suite(
        pytester,
        CHAIN,
        {
            "Alpha": module("Alpha", module_tier="smoke", checks={"test_read": None, "test_drill": "full"}),
            "Bravo": module("Bravo", module_tier=None, checks={"test_traffic": None}),
        },
    )
    run(pytester).assert_outcomes(passed=3)
    assert ran(pytester) == {"test_read", "test_drill", "test_traffic"}


def test_a_team_without_a_smoke_check_is_refused_in_a_smoke_pass(pytester: pytest.Pytester) -> None:
    write_suite(
        pytester,
        CHAIN,
        {
            "Alpha": module("Alpha", module_tier="smoke", checks={"test_read": None}),
            "Bravo": module("Bravo", module_tier=None, checks={"test_traffic": "full"}),
        },
    )
    result = run(pytester, "--tier", "smoke")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*Team Bravo has no check in tier 'smoke'; mark its cheap read-only*"])
    assert ran(pytester) == set()
