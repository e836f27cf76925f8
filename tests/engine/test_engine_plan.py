"""The plan as data and its graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.plan import PlanError, load_plan, parse_dependency_matrix, plan_from_data

ROOT = Path(__file__).resolve().parents[2]


def team(name: str, phase: int, requires: list[str], hours: list[float] | None = None) -> dict[str, object]:
    return {
        "name": name,
        "phase": phase,
        "requires": requires,
        "hours": hours or [1, 1],
        "module": f"test_{name.lower().replace('-', '_')}.py",
    }


def diamond(**hours: float) -> dict[str, object]:
    return {
        "team": [
            team("A", 1, [], [0, hours.get("A", 1)]),
            team("B", 2, ["A"], [0, hours.get("B", 1)]),
            team("C", 2, ["A"], [0, hours.get("C", 1)]),
            team("D", 3, ["B", "C"], [0, hours.get("D", 1)]),
            team("E", 3, ["C"], [0, hours.get("E", 1)]),
        ]
    }


def test_the_real_plan_matches_the_documents_dependency_matrix() -> None:
    plan = load_plan(ROOT / "phases" / "plan.toml")
    matrix = parse_dependency_matrix((ROOT / "docs" / "AGENT_TEAMS_PLAN.md").read_text(encoding="utf-8"))
    # Base (phase 0) is the suite's own: the plan's "base installation complete".
    assert plan["Base"].phase == 0 and plan["Base"].requires == ()
    assert plan["Alpha"].requires == ("Base",)
    assert matrix["Alpha"] == []
    assert [name for name in plan.names if name != "Base"] == list(matrix)
    for name, depends in matrix.items():
        if name != "Alpha":
            assert list(plan[name].requires) == depends, name
    assert plan.topological_order()[0] == "Base"
    for member in plan:
        assert member.tasks, f"{member.name} lists no tasks"
        for req in member.requires:
            assert plan[req].phase < member.phase


def test_graph_queries() -> None:
    plan = plan_from_data(diamond(), Path("."))
    assert plan.topological_order() == ["A", "B", "C", "D", "E"]
    assert plan.descendants("C") == {"D", "E"}
    assert plan.descendants("D") == set()
    assert plan.ancestors("D") == {"A", "B", "C"}
    assert plan.dependents("A") == ["B", "C"]


def test_critical_path_and_phase_barrier() -> None:
    plan = plan_from_data(diamond(), Path("."))
    durations = {"A": 1.0, "B": 5.0, "C": 2.0, "D": 1.0, "E": 10.0}
    assert plan.critical_path(durations) == (13.0, ["A", "C", "E"])
    # phases: 1 -> 1, 2 -> max(5, 2), 3 -> max(1, 10)
    assert plan.phase_barrier_total(durations) == 16.0
    assert plan.critical_path({}) == (0.0, ["A"])


@pytest.mark.parametrize(
    ("teams", "message"),
    [
        ([team("A", 1, ["B"]), team("B", 2, ["A"])], "cycle"),
        ([team("A", 1, []), team("B", 1, ["A"])], "earlier phase"),
        ([team("A", 1, ["Z"])], "unknown team 'Z'"),
        ([team("A", 1, []), team("A", 2, [])], "share module"),
        ([{**team("A", 1, []), "hours": [3, 1]}], "hours"),
        ([{**team("A", 1, []), "colour": "red"}], "unknown field"),
        ([{**team("A", 1, []), "module": "alpha.py"}], "module"),
        ([{**team("A", 1, []), "prepare": "steps.delta.kubernetes"}], "prepare must name a function"),
        ([{**team("A", 1, []), "settings": "steps.alpha.settings"}], "settings must name a class"),
    ],
)
def test_invalid_plans_name_the_problem(teams: list[dict[str, object]], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan_from_data({"team": teams}, Path("."))


def test_missing_plan_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="plan_file or --plan"):
        load_plan(tmp_path / "nope.toml")


def test_matrix_parser_reads_rows_and_none() -> None:
    text = """
## Dependency Matrix

| Team | Depends On | Blocks | Parallel With |
|------|-----------|---------|---------------|
| Alpha | None | All | None |
| Delta | Bravo, Charlie | Echo-1 | None |

## Next
"""
    assert parse_dependency_matrix(text) == {"Alpha": [], "Delta": ["Bravo", "Charlie"]}


def test_a_team_names_what_the_controller_prepares_for_it() -> None:
    plan = load_plan(Path(__file__).resolve().parents[2] / "phases" / "plan.toml")
    assert plan["Delta"].prepare == "steps.delta.kubernetes:prepare"
    assert plan["Alpha"].prepare is None
