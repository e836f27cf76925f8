"""Every check of a phase module declares its verification tier, and every team has smoke
checks: `--tier smoke` would otherwise leave the check out silently, or refuse the team."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from engine.collection import TIERS

PHASES = Path(__file__).resolve().parents[1] / "phases"


def _tiers_in(node: ast.AST) -> set[str]:
    """The tier markers (`pytest.mark.smoke`, `pytest.mark.full`) an expression names."""
    return {
        sub.attr
        for sub in ast.walk(node)
        if isinstance(sub, ast.Attribute) and sub.attr in TIERS and ast.unparse(sub.value) == "pytest.mark"
    }


def check_tiers(source: str) -> dict[str, str | None]:
    """Each check's tier in a phase module's source: its own marker, else its module's."""
    tree = ast.parse(source)
    module_tier: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            module_tier = _tiers_in(node.value)
    assert len(module_tier) <= 1, f"the module declares two tiers: {sorted(module_tier)}"
    tiers: dict[str, str | None] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            own = set().union(*(_tiers_in(d) for d in node.decorator_list))
            assert len(own) <= 1, f"{node.name} declares two tiers: {sorted(own)}"
            chosen = own or module_tier
            tiers[node.name] = next(iter(chosen)) if chosen else None
    return tiers


@pytest.mark.parametrize("module", sorted(PHASES.glob("test_p*.py")), ids=lambda p: p.name)
def test_every_check_declares_a_tier_and_the_team_has_smoke_checks(module: Path) -> None:
    tiers = check_tiers(module.read_text(encoding="utf-8"))
    untiered = [name for name, tier in tiers.items() if tier is None]
    assert not untiered, f"{module.name}: mark these smoke or full (or the module smoke): {untiered}"
    assert "smoke" in tiers.values(), f"{module.name}: no smoke check; a smoke pass would refuse the team"


def test_a_checks_own_marker_wins_over_its_modules() -> None:
    source = "\n".join(
        [
            "import pytest",
            'pytestmark = [pytest.mark.usefixtures("applied"), pytest.mark.smoke]',
            "def test_read(): pass",
            "@pytest.mark.full",
            "def test_drill(): pass",
        ]
    )
    assert check_tiers(source) == {"test_read": "smoke", "test_drill": "full"}
    assert check_tiers("import pytest\ndef test_x(): pass\n") == {"test_x": None}
