"""The plan as data: teams, phases, prerequisites, estimates, tasks and test modules.

`load_plan` reads ``phases/plan.toml`` and validates it (unknown or duplicate teams, cycles,
a prerequisite in the same or a later phase); `Plan` answers the graph questions the engine
asks: topological order, ancestors and descendants, the critical path for given durations.
`parse_dependency_matrix` reads the plan document's Markdown table so a test can hold the
data to the document row by row.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


class PlanError(ValueError):
    """The plan file is invalid; the message names the team, the field and the fix."""


@dataclass(frozen=True)
class Team:
    name: str
    phase: int
    requires: tuple[str, ...]
    # The plan's estimate in hours, (low, high).
    hours: tuple[float, float]
    # Test module file name, relative to the plan file's directory.
    module: str
    tasks: tuple[str, ...] = ()
    # Roles of the inventory's hosts the team works on ("primary", "probe", ...).
    roles: tuple[str, ...] = ()
    # "module:function" preparing what the team needs on the controller (an artifact build),
    # started in the background when the run starts: function(settings, profile, artifacts_dir)
    # returns (label, job) or None when nothing needs preparing.
    prepare: str | None = None
    # "module:Class" of the team's own config section (settings.base.TeamSettings); the
    # config is composed of the sections the plan names (settings.model.compose).
    settings: str | None = None

    @property
    def label(self) -> str:
        return f"Team {self.name}"


@dataclass(frozen=True)
class Plan:
    teams: tuple[Team, ...]
    # Directory the team modules live in (the plan file's directory).
    directory: Path
    source: Path | None = None
    _by_name: dict[str, Team] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {team.name: team for team in self.teams})

    def __getitem__(self, name: str) -> Team:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.teams)

    @property
    def names(self) -> list[str]:
        return [team.name for team in self.teams]

    def dependents(self, name: str) -> list[str]:
        """Teams that list `name` as a direct prerequisite, in plan order."""
        return [team.name for team in self.teams if name in team.requires]

    def ancestors(self, name: str) -> set[str]:
        """Every team `name` transitively requires."""
        seen: set[str] = set()
        stack = list(self[name].requires)
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self[current].requires)
        return seen

    def descendants(self, name: str) -> set[str]:
        """Every team that transitively requires `name`."""
        seen: set[str] = set()
        stack = self.dependents(name)
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.dependents(current))
        return seen

    def topological_order(self) -> list[str]:
        """Teams so that every team comes after its prerequisites; ties keep plan order."""
        return _topological_order(self.teams)

    def phases(self) -> dict[int, list[str]]:
        grouped: dict[int, list[str]] = {}
        for team in self.teams:
            grouped.setdefault(team.phase, []).append(team.name)
        return dict(sorted(grouped.items()))

    def critical_path(self, durations: Mapping[str, float]) -> tuple[float, list[str]]:
        """Longest path through the DAG weighted by `durations` (teams missing weigh 0).

        Returns the path's length and its teams, first to last."""
        best: dict[str, tuple[float, list[str]]] = {}
        for name in self.topological_order():
            weight = durations.get(name, 0.0)
            before = max(
                (best[req] for req in self[name].requires),
                key=lambda entry: entry[0],
                default=(0.0, []),
            )
            best[name] = (before[0] + weight, [*before[1], name])
        if not best:
            return 0.0, []
        return max(best.values(), key=lambda entry: entry[0])

    def phase_barrier_total(self, durations: Mapping[str, float]) -> float:
        """Every phase waits for the slowest team of the phase before it (the plan's
        "Parallel Execution" estimate): the sum over phases of the longest team."""
        return sum(
            max((durations.get(name, 0.0) for name in names), default=0.0) for names in self.phases().values()
        )

    def module_team(self) -> dict[str, str]:
        """Module file name -> team name."""
        return {team.module: team.name for team in self.teams}


def _topological_order(teams: Iterable[Team]) -> list[str]:
    teams = list(teams)
    done: list[str] = []
    placed: set[str] = set()
    remaining = list(teams)
    while remaining:
        ready = [team for team in remaining if set(team.requires) <= placed]
        if not ready:
            cycle = ", ".join(team.name for team in remaining)
            raise PlanError(f"plan: the prerequisites of these teams form a cycle: {cycle}")
        for team in ready:
            done.append(team.name)
            placed.add(team.name)
        remaining = [team for team in remaining if team.name not in placed]
    return done


def _hours(name: str, value: object) -> tuple[float, float]:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] <= value[1]
    ):
        return float(value[0]), float(value[1])
    raise PlanError(f"plan: team {name!r}: hours must be [low, high] with 0 <= low <= high, got {value!r}")


def plan_from_data(data: Mapping[str, object], directory: Path, source: Path | None = None) -> Plan:
    raw_teams = data.get("team")
    if not isinstance(raw_teams, list) or not raw_teams:
        raise PlanError("plan: no [[team]] tables; declare each team as [[team]] with name, phase, requires")
    teams: list[Team] = []
    seen_modules: dict[str, str] = {}
    for index, raw in enumerate(raw_teams):
        if not isinstance(raw, dict):
            raise PlanError(f"plan: team #{index + 1} is not a table")
        name = raw.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", name):
            raise PlanError(f"plan: team #{index + 1}: name must be a word like 'Echo-1', got {name!r}")
        unknown = set(raw) - {
            "name",
            "phase",
            "requires",
            "hours",
            "module",
            "tasks",
            "roles",
            "prepare",
            "settings",
        }
        if unknown:
            raise PlanError(f"plan: team {name!r}: unknown field(s) {', '.join(sorted(unknown))}")
        phase = raw.get("phase")
        if not isinstance(phase, int) or isinstance(phase, bool) or phase < 0:
            raise PlanError(f"plan: team {name!r}: phase must be an integer >= 0, got {phase!r}")
        requires = raw.get("requires", [])
        if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
            raise PlanError(f"plan: team {name!r}: requires must be a list of team names")
        module = raw.get("module")
        if not isinstance(module, str) or not re.fullmatch(r"test_[\w]+\.py", module):
            raise PlanError(f"plan: team {name!r}: module must be a file name like 'test_p1_alpha.py'")
        if module in seen_modules:
            raise PlanError(f"plan: teams {seen_modules[module]!r} and {name!r} share module {module!r}")
        seen_modules[module] = name
        tasks = raw.get("tasks", [])
        if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
            raise PlanError(f"plan: team {name!r}: tasks must be a list of task names")
        roles = raw.get("roles", [])
        if not isinstance(roles, list) or not all(
            isinstance(r, str) and re.fullmatch(r"[a-z][a-z-]*", r) for r in roles
        ):
            raise PlanError(f"plan: team {name!r}: roles must be a list of role names like 'primary'")
        prepare = raw.get("prepare")
        if prepare is not None and not (isinstance(prepare, str) and re.fullmatch(r"[\w.]+:\w+", prepare)):
            raise PlanError(
                f"plan: team {name!r}: prepare must name a function like 'steps.<team>.<module>:prepare'"
            )
        settings = raw.get("settings")
        if settings is not None and not (isinstance(settings, str) and re.fullmatch(r"[\w.]+:\w+", settings)):
            raise PlanError(
                f"plan: team {name!r}: settings must name a class like 'steps.<team>.settings:<Team>Settings'"
            )
        teams.append(
            Team(
                name=name,
                phase=phase,
                requires=tuple(requires),
                hours=_hours(name, raw.get("hours", [0, 0])),
                module=module,
                tasks=tuple(tasks),
                roles=tuple(roles),
                prepare=prepare,
                settings=settings,
            )
        )
    by_name: dict[str, Team] = {}
    for team in teams:
        if team.name in by_name:
            raise PlanError(f"plan: team {team.name!r} is declared twice; rename or merge one of them")
        by_name[team.name] = team
    for team in teams:
        for req in team.requires:
            if req not in by_name:
                known = ", ".join(by_name)
                raise PlanError(f"plan: team {team.name!r} requires unknown team {req!r} (known: {known})")
            if req == team.name:
                raise PlanError(f"plan: team {team.name!r} requires itself")
    _topological_order(teams)  # raises on a cycle before the phase check can hide it
    for team in teams:
        for req in team.requires:
            if by_name[req].phase >= team.phase:
                raise PlanError(
                    f"plan: team {team.name!r} (phase {team.phase}) requires {req!r} "
                    f"(phase {by_name[req].phase}); a prerequisite must sit in an earlier phase"
                )
    return Plan(teams=tuple(teams), directory=directory, source=source)


def load_plan(path: Path) -> Plan:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan file {path} does not exist; set the ini option plan_file or --plan") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"plan file {path}: invalid TOML: {exc}") from None
    return plan_from_data(data, path.parent, path)


_NONE_WORDS = {"none", "-", "—", ""}


def parse_dependency_matrix(markdown: str) -> dict[str, list[str]]:
    """The "Dependency Matrix" table of the plan document: team -> teams it depends on."""
    section = re.search(r"^##+\s*Dependency Matrix\s*$(.*?)(?=^##?\s|\Z)", markdown, re.M | re.S)
    if not section:
        raise PlanError("plan document has no '## Dependency Matrix' section")
    rows: dict[str, list[str]] = {}
    header: list[str] | None = None
    for line in section.group(1).splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if header is None:
            header = [cell.lower() for cell in cells]
            continue
        if all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            continue
        row = dict(zip(header, cells, strict=False))
        depends = row.get("depends on", "")
        rows[row["team"]] = [] if depends.lower() in _NONE_WORDS else [d.strip() for d in depends.split(",")]
    if not rows:
        raise PlanError("plan document: the Dependency Matrix table has no rows")
    return rows
