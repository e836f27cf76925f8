"""The dry run's plan (``--check``): what every team would change, like
``ansible-playbook --check --diff``.

Each report carries its would-change ops (`engine.contract.add_changes`: ``"[host] => op"``
and the runner's diff, already redacted; sensitive files carry no diff). The controller
prints them per team in the terminal section "would change (check mode)", long diffs cut
with a pointer, and writes the full list with every diff to ``reports/check.md`` and
``reports/check.json``. Pure functions: no pytest, no I/O beyond `write`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from engine import contract
from engine.run import TeamRun

SECTION = "would change (check mode)"
# Lines of one diff shown in the terminal; the rest is in reports/check.md.
TERMINAL_DIFF_LINES = 20


def teams_with_plan(run: TeamRun) -> list[str]:
    """Collected teams, in plan order."""
    return run.collected_teams()


def total(run: TeamRun) -> int:
    return sum(len(run.teams[name].would_change) for name in teams_with_plan(run))


def summary_line(run: TeamRun) -> str:
    count = total(run)
    teams = sum(1 for name in teams_with_plan(run) if run.teams[name].would_change)
    if not count:
        return contract.check_reason("nothing would change; nothing was applied or verified")
    return contract.check_reason(
        f"{count} op(s) would change in {teams} team(s); nothing was applied or verified"
    )


def terminal_lines(run: TeamRun, markdown_path: Path, limit: int = TERMINAL_DIFF_LINES) -> list[str]:
    lines: list[str] = []
    for name in teams_with_plan(run):
        status = run.teams[name]
        ops = status.would_change
        lines.append(f"Team {name} ({status.verdict.value}): {len(ops)} op(s) would change")
        for entry in ops:
            lines.append(f"  ~ {entry.op}")
            diff = entry.diff
            if not diff:
                continue
            diff_lines = diff.rstrip("\n").splitlines()
            for line in diff_lines[:limit]:
                lines.append(f"      {line}")
            if len(diff_lines) > limit:
                lines.append(f"      … {len(diff_lines) - limit} more line(s): see {markdown_path}")
        for note in _notes(run, name):
            lines.append(f"  ! {note}")
    return lines


def _notes(run: TeamRun, name: str) -> list[str]:
    """Check-mode skips with a reason beyond the plain one (e.g. a fixture that could not
    compute its plan), and failures, once each."""
    status = run.teams[name]
    seen: list[str] = []
    for entry in status.checked:
        reason = entry.split(": ", 1)[1] if ": " in entry else entry
        if "; " in reason and reason not in seen:
            seen.append(reason)
    if status.blocked_by:
        seen.append(contract.blocked_reason(status.blocked_by))
    seen.extend(f"failed: {failure}" for failure in status.failures)
    return seen


def document(run: TeamRun, target: str) -> dict[str, object]:
    return {
        "target": target,
        "total": total(run),
        "teams": [
            {
                "team": name,
                "outcome": run.teams[name].verdict.value,
                "would_change": [asdict(entry) for entry in run.teams[name].would_change],
                "notes": _notes(run, name),
            }
            for name in teams_with_plan(run)
        ],
    }


def markdown(run: TeamRun, target: str) -> str:
    out = [f"# Would change (check mode) on {target}", "", summary_line(run), ""]
    for name in teams_with_plan(run):
        status = run.teams[name]
        out += [f"## Team {name} ({status.verdict.value}): {len(status.would_change)} op(s)", ""]
        for entry in status.would_change:
            out.append(f"- `{entry.op}`")
            if entry.diff:
                fence = "````" if "```" in entry.diff else "```"
                out += ["", f"{fence}diff", entry.diff.rstrip("\n"), fence, ""]
        for note in _notes(run, name):
            out.append(f"- note: {note}")
        out.append("")
    return "\n".join(out)


def write(run: TeamRun, directory: Path, target: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    md = directory / "check.md"
    js = directory / "check.json"
    md.write_text(markdown(run, target), encoding="utf-8")
    js.write_text(json.dumps(document(run, target), indent=1, ensure_ascii=False), encoding="utf-8")
    return md, js
