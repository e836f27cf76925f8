"""docs/TEAMS.md keeps up with the plan: one section per team, in the plan's phase, marked
"not implemented" exactly when the team has no module under phases/."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "TEAMS.md"
HEADING = re.compile(r"^## Phase (?P<phase>\d+): (?P<team>[A-Za-z0-9-]+)(?P<rest>.*)$", re.MULTILINE)


def plan() -> list[dict]:
    with open(ROOT / "phases" / "plan.toml", "rb") as handle:
        return tomllib.load(handle)["team"]


def sections() -> dict[str, tuple[int, str]]:
    return {m["team"]: (int(m["phase"]), m["rest"]) for m in HEADING.finditer(DOC.read_text())}


def test_every_team_has_a_section_in_its_phase() -> None:
    found = sections()
    assert {team["name"]: team["phase"] for team in plan()} == {name: p for name, (p, _) in found.items()}


def test_not_implemented_exactly_when_the_module_is_missing() -> None:
    found = sections()
    for team in plan():
        missing = not (ROOT / "phases" / team["module"]).exists()
        marked = "(not implemented)" in found[team["name"]][1]
        assert marked == missing, f"{team['name']}: module missing {missing}, marked {marked}"


def test_status_table_matches_the_modules() -> None:
    row = re.compile(r"^\| \d+ \| (\S+) \| `(\S+)` \| (implemented|not implemented) \|", re.MULTILINE)
    rows = row.findall(DOC.read_text())
    assert {team: status for team, _, status in rows} == {
        team["name"]: "implemented" if (ROOT / "phases" / team["module"]).exists() else "not implemented"
        for team in plan()
    }
    assert {team: module for team, module, _ in rows} == {team["name"]: team["module"] for team in plan()}
