"""Synthetic team suites for pytester runs of the engine plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ENGINE_ROOT = Path(__file__).resolve().parents[2]

# Every synthetic test appends its own start/end stamps here, independent of the engine.
STAMP_HELPER = """
import json, os, time

def stamp(team, name, seconds=0.0, fail=False):
    start = time.time()
    time.sleep(seconds)
    with open(os.path.join(os.path.dirname(__file__), "stamps.jsonl"), "a") as handle:
        handle.write(json.dumps({"team": team, "test": name, "start": start, "end": time.time(),
                                 "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}) + "\\n")
    assert not fail, f"{team} {name} failed on purpose"
"""


def write_suite(
    pytester: pytest.Pytester,
    teams: dict[str, tuple[int, list[str]]],
    bodies: dict[str, str],
    *,
    missing: tuple[str, ...] = (),
) -> None:
    """`teams`: name -> (phase, requires); `bodies`: name -> module source (tests); teams in
    `missing` are in the plan but have no module."""
    lines = []
    for name, (phase, requires) in teams.items():
        lines += [
            "[[team]]",
            f'name = "{name}"',
            f"phase = {phase}",
            f"requires = {json.dumps(requires)}",
            "hours = [1, 2]",
            f'module = "{module_name(name)}"',
            'tasks = ["Main task"]',
            "",
        ]
    pytester.makefile(".toml", plan="\n".join(lines))
    pytester.makepyfile(stamping=STAMP_HELPER)
    pytester.makeini("[pytest]\nplan_file = plan.toml\n")
    for name, body in bodies.items():
        if name not in missing:
            pytester.makepyfile(**{module_name(name).removesuffix(".py"): body})


def module_name(team: str) -> str:
    return f"test_{team.lower().replace('-', '_')}.py"


def sleeper(team: str, seconds: float = 0.0, *, tests: int = 2, fail: str | None = None) -> str:
    out = ["import pytest", "from stamping import stamp", ""]
    for index in range(1, tests + 1):
        name = f"test_{index}"
        out += [
            '@pytest.mark.task("Main task")',
            f"def {name}():",
            f"    stamp({team!r}, {name!r}, {seconds / tests!r}, fail={name == fail!r})",
            "",
        ]
    return "\n".join(out)


def run(pytester: pytest.Pytester, *args: str, timeout: float = 60) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "engine.plugin", "-p", "no:cacheprovider", "--reports-dir", "reports", *args, timeout=timeout
    )


def timeline(pytester: pytest.Pytester) -> dict[str, dict[str, object]]:
    data = json.loads((pytester.path / "reports" / "timeline.json").read_text())
    return {entry["team"]: entry for entry in data["teams"]}


def signals(pytester: pytest.Pytester) -> list[dict[str, object]]:
    path = pytester.path / "reports" / "signals.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def stamps(pytester: pytest.Pytester) -> dict[str, tuple[float, float, set[str]]]:
    """team -> (first start, last end, workers), from the tests' own stamps."""
    result: dict[str, tuple[float, float, set[str]]] = {}
    for line in (pytester.path / "stamps.jsonl").read_text().splitlines():
        entry = json.loads(line)
        start, end, workers = result.get(entry["team"], (entry["start"], entry["end"], set()))
        result[entry["team"]] = (
            min(start, entry["start"]),
            max(end, entry["end"]),
            workers | {entry["worker"]},
        )
    return result
