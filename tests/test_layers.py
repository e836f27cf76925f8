"""The architecture, as the imports show it: each layer imports only the layers below it, and
a team's package imports only its own and its prerequisites' packages (phases/plan.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from engine.plan import load_plan

ROOT = Path(__file__).resolve().parent.parent
PLAN = load_plan(ROOT / "phases" / "plan.toml")

# Bottom to top. A module may import its own layer and any layer listed before it.
LAYERS = ["transport", "settings", "recipes", "apply", "steps", "checks", "engine", "targets", "phases"]


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [
                (node.lineno, f"{node.module}.{alias.name}") for alias in node.names
            ]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def _team_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "steps" else None


def _team_of_package() -> dict[str, str]:
    """steps/<package> -> the plan's team that names its settings there."""
    owners = {}
    for team in PLAN:
        if team.settings:
            owners[_team_package(team.settings.partition(":")[0]) or ""] = team.name
    return owners


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_a_layer_imports_only_layers_below_it(layer: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _modules(layer)
        for line, name in _imports(path)
        if name.split(".")[0] in LAYERS and name.split(".")[0] not in allowed
    ]
    assert not upward, "\n".join(upward)


def test_a_team_imports_only_its_prerequisites() -> None:
    owners = _team_of_package()
    packages = sorted(p.name for p in (ROOT / "steps").iterdir() if (p / "__init__.py").exists())
    assert sorted(owners) == packages, "every package under steps/ belongs to one team of the plan"
    against_plan = []
    for package in packages:
        team = owners[package]
        allowed = {team} | PLAN.ancestors(team)
        for path in _modules(f"steps/{package}"):
            for line, name in _imports(path):
                other = _team_package(name)
                if other and other in owners and owners[other] not in allowed:
                    against_plan.append(
                        f"{path.relative_to(ROOT)}:{line} ({team}) imports {name} ({owners[other]})"
                    )
    assert not against_plan, "\n".join(against_plan)


def test_no_folder_holds_more_than_about_a_third_of_the_code() -> None:
    # Per folder (its own modules, not its subfolders): a team's package is a folder of its own.
    folders: dict[Path, int] = {}
    for layer in LAYERS:
        for path in _modules(layer):
            folders[path.parent] = folders.get(path.parent, 0) + len(path.read_text().splitlines())
    total = sum(folders.values())
    crowded = {str(f.relative_to(ROOT)): f"{n / total:.0%}" for f, n in folders.items() if n > total / 3}
    assert not crowded, crowded


def test_no_phase_module_skips_a_check_plainly() -> None:
    # A plain skip fails the team (skipped by mistake); a config choice says not_applicable,
    # a missing capability is a waiver (@pytest.mark.requires).
    plain = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in _modules("phases")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr in {"skip", "skipif", "xfail"}
        and isinstance(node.value, ast.Name | ast.Attribute)
        and ast.unparse(node.value) in {"pytest", "pytest.mark"}
    ]
    assert not plain, plain
