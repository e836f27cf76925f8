"""docs/TEAMS.md keeps up with the plan: one section per team, in the plan's phase, marked
"not implemented" exactly when the team has no module under phases/; every implemented team
has its own page, docs/teams/<package>.md (the package its settings live in), linked from its
section."""

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


def section_bodies() -> dict[str, str]:
    """Each team's section of docs/TEAMS.md: from its heading to the next "## " heading."""
    text = DOC.read_text()
    found = list(HEADING.finditer(text))
    bodies = {}
    for match in found:
        following = text.find("\n## ", match.end())
        bodies[match["team"]] = text[match.end() : following if following != -1 else len(text)]
    return bodies


def implemented() -> list[dict]:
    return [team for team in plan() if (ROOT / "phases" / team["module"]).exists()]


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


def package(team: dict) -> str | None:
    """The team's package under steps/, from its settings in the plan ("steps.<package>....")."""
    parts = team.get("settings", "").partition(":")[0].split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "steps" else None


def test_every_implemented_team_has_its_page_linked_from_its_section() -> None:
    bodies = section_bodies()
    problems = []
    for team in implemented():
        name, found = team["name"], package(team)
        if found is None:
            problems.append(f'{name}: no settings = "steps.<package>.settings:Class" in phases/plan.toml')
            continue
        page = f"teams/{found}.md"
        if not (DOC.parent / page).is_file():
            problems.append(f"{name}: docs/{page} does not exist")
        if f"]({page})" not in bodies.get(name, ""):
            problems.append(f"{name}: its section in docs/TEAMS.md does not link ({page})")
    assert not problems, "\n".join(problems)


def test_every_team_page_belongs_to_an_implemented_team() -> None:
    packages = {package(team) for team in implemented()}
    pages = {path.stem for path in (DOC.parent / "teams").glob("*.md")}
    assert pages <= packages, f"pages of no implemented team: {sorted(pages - packages)}"
