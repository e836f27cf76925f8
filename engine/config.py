"""The engine's resolved options: the plan, where its modules are, the reports directory,
``--teams``/``--resume`` and the target verdicts are recorded for."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.plan import Plan, Team
from engine.state import RecordedVerdict, Verdict, VerdictLog

TARGET_KEY = pytest.StashKey[str]()
ENVIRONMENT_KEY = pytest.StashKey[dict[str, str]]()
WEBHOOK_KEY = pytest.StashKey[tuple[str, float]]()

DEFAULT_TARGET = "default"


def target_name(config: pytest.Config) -> str:
    return config.stash.get(TARGET_KEY, DEFAULT_TARGET)


@dataclass
class EngineSettings:
    config: pytest.Config
    plan: Plan
    reports_dir: Path
    teams: list[str] | None = None
    resume: bool = False
    # "smoke": only the checks marked smoke run; "full": every check.
    tier: str = "full"
    # team -> its module as node ids spell it (relative to rootdir, "/" separated)
    module_nodeid: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rootpath = self.config.rootpath
        for team in self.plan.teams:
            relative = os.path.relpath(self.plan.directory / team.module, rootpath)
            self.module_nodeid[team.name] = Path(relative).as_posix()
        self._team_of_file = {module: team for team, module in self.module_nodeid.items()}

    @property
    def target_name(self) -> str:
        return target_name(self.config)

    @property
    def state_dir(self) -> Path:
        return self.reports_dir / "state"

    def team_of_nodeid(self, nodeid: str) -> str | None:
        return self._team_of_file.get(nodeid.split("::", 1)[0])

    def implemented(self) -> set[str]:
        return {team.name for team in self.plan.teams if (self.plan.directory / team.module).is_file()}

    def recorded(self) -> dict[str, RecordedVerdict]:
        return VerdictLog(self.state_dir, self.target_name).read()

    def wanted_teams(self, recorded: dict[str, RecordedVerdict]) -> set[str] | None:
        """--teams: the named teams and every prerequisite, except (with --resume)
        prerequisites recorded green. None when --teams is not given."""
        if not self.teams:
            return None
        wanted = set(self.teams)
        stack = [req for name in self.teams for req in self.plan[name].requires]
        while stack:
            name = stack.pop()
            record = recorded.get(name)
            counted = self.resume and record is not None and record.verdict == Verdict.GREEN.value
            if name in wanted or counted:
                continue
            wanted.add(name)
            stack.extend(self.plan[name].requires)
        return wanted

    def teams_to_run(self) -> list[Team]:
        """Implemented teams this run may execute: those --teams names with their
        prerequisites (with --resume, less those recorded green), or every implemented team."""
        implemented = self.implemented()
        wanted = self.wanted_teams(self.recorded() if self.resume else {})
        return [
            team
            for team in self.plan.teams
            if team.name in implemented and (wanted is None or team.name in wanted)
        ]
