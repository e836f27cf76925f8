"""The config is composed of the sections the plan's teams declare in their own packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.plan import load_plan
from settings.loader import ConfigError, load_settings
from settings.model import DEFAULT_PLAN, RootSettings, Settings, compose

PLAN = load_plan(DEFAULT_PLAN)


def test_every_implemented_team_has_its_section_from_its_own_package() -> None:
    declared = {team.name: team.settings for team in PLAN if team.settings}
    assert set(declared) == {team.name for team in PLAN if (PLAN.directory / team.module).exists()}
    classes = [
        f"{type(section).__module__}:{type(section).__name__}" for section in Settings().team_sections()
    ]
    assert classes == list(declared.values())
    assert all(ref.startswith("steps.") and ref.split(":")[0].endswith(".settings") for ref in classes)


def test_the_root_declares_no_team_section() -> None:
    sections = {section.section for section in Settings().team_sections()}
    assert sections.isdisjoint(RootSettings.model_fields)
    assert set(Settings.model_fields) == set(RootSettings.model_fields) | sections


def _plan(tmp_path: Path, *teams: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text("".join(f'[[team]]\nname = "T{i}"\nsettings = "{ref}"\n' for i, ref in enumerate(teams)))
    return path


def test_a_plan_naming_something_else_than_a_team_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"settings\.model:RootSettings is not a TeamSettings"):
        compose(_plan(tmp_path, "settings.model:RootSettings"))


def test_two_teams_cannot_claim_one_section(tmp_path: Path) -> None:
    reference = "steps.alpha.settings:AlphaSettings"
    with pytest.raises(TypeError, match=r"the section \[alpha\] of AlphaSettings is taken"):
        compose(_plan(tmp_path, reference, reference))


def test_a_composed_model_reads_its_sections_and_refuses_unknown_ones(tmp_path: Path) -> None:
    model = compose(_plan(tmp_path, "steps.echo2.settings:Echo2Settings"))
    assert model.model_validate({"echo2": {"root": "/srv/v"}}).echo2.root == "/srv/v"
    with pytest.raises(ValueError, match="alpha"):
        model.model_validate({"alpha": {}})


def test_cross_team_problems_are_declared_by_the_team_and_reported_by_the_loader(tmp_path: Path) -> None:
    # Echo-1's pool inside the scratch subnet, not kept free: Echo-1's own check says so.
    config = tmp_path / "suite.toml"
    config.write_text('[echo1.load_balancer]\npool = ["10.231.0.16/29"]\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert any(
        "keep_free" in problem and "echo1.load_balancer.pool" in problem for problem in info.value.problems
    )
