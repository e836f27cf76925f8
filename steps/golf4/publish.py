"""Publishing the controller's reports to the dashboard on the primary host.

The engine records as a run goes: a completion signal per team as it settles
(``signals.jsonl``), and when the run ends the verdicts per target (``state/<target>.json``)
and the run's timeline (``timeline.json``). `publish` gathers what is recorded now for one
target, with the plan's teams and the run's fleet, into one JSON document and writes it to
``golf4.data_dir`` on the host, where the service reads it on every request.

It is a report upload, not a step: every run records something new (Base runs in every run
and so signals anew), so the document differs each time and is never counted as a change.
It writes with `Host.run` (mktemp, then mv: a reader sees the old document or the new one),
in apply and verify-only runs alike (a verify-only run records verdicts too), never in a dry
run. Golf-4's phase module publishes before its checks; the engine's side can call it again
when a run ends, so the dashboard then shows that run complete (see docs/teams/golf4.md).
"""

from __future__ import annotations

import json
import posixpath
import shlex
import tomllib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apply.runner import Host
from settings.model import DEFAULT_PLAN, Settings

# The application reads this name (steps/golf4/app/reports.py: FILE_NAME, FORMAT).
FILE_NAME = "reports.json"
FORMAT = 1
DRY_RUN = "checked"


@dataclass(frozen=True)
class FleetHost:
    name: str
    address: str
    roles: tuple[str, ...]


def plan_teams(plan_file: Path) -> list[dict[str, Any]]:
    """The plan's teams in plan order, each with whether its module exists (implemented)."""
    with open(plan_file, "rb") as handle:
        plan = tomllib.load(handle)
    return [
        {
            "name": team["name"],
            "phase": int(team["phase"]),
            "requires": list(team.get("requires", [])),
            "tasks": list(team.get("tasks", [])),
            "implemented": (plan_file.parent / team["module"]).is_file(),
        }
        for team in plan.get("team", [])
    ]


def recorded_verdicts(state_dir: Path, target_name: str) -> dict[str, Any]:
    """The verdicts recorded for ``target_name`` (each state file names its target)."""
    for path in sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict) and data.get("target") == target_name:
            return dict(data.get("teams", {}))
    return {}


def latest_signals(path: Path, kept: int) -> list[dict[str, Any]]:
    """The last ``kept`` signals of a signals.jsonl, in order. A last line still being
    appended (no newline yet) is left for the next publication."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        lines = deque(handle, maxlen=kept)
    signals = []
    for number, line in enumerate(lines, 1):
        if not line.endswith("\n") and number == len(lines):
            break
        if line.strip():
            try:
                signals.append(json.loads(line))
            except ValueError as exc:
                raise ValueError(f"{path}: a line is not JSON ({exc}): {line[:120]!r}") from exc
    return signals


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def document(
    reports_dir: Path,
    *,
    target_name: str,
    fleet: Iterable[FleetHost],
    signals_kept: int,
    plan_file: Path = DEFAULT_PLAN,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Pure but for reading the reports: the document the dashboard reads."""
    timeline_file = reports_dir / "timeline.json"
    timeline = None
    written = None
    dry_run = False
    if timeline_file.is_file():
        timeline = json.loads(timeline_file.read_text(encoding="utf-8"))
        written = _iso(timeline_file.stat().st_mtime)
        # A dry run (--check) writes its timeline too; it verified nothing, so it is left out
        # (its time still tells which signals came after it).
        dry_run = any(team.get("outcome") == DRY_RUN for team in timeline.get("teams", []))
        if dry_run:
            timeline = None
    return {
        "format": FORMAT,
        "published_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "target": target_name,
        "plan": plan_teams(plan_file),
        "state": recorded_verdicts(reports_dir / "state", target_name),
        "signals": latest_signals(reports_dir / "signals.jsonl", signals_kept),
        "timeline": timeline,
        "timeline_written_at": written,
        "timeline_dry_run": dry_run,
        "fleet": [{"name": h.name, "address": h.address, "roles": list(h.roles)} for h in fleet],
    }


def upload_command(data_dir: str) -> str:
    """Write stdin to the document atomically (readable by the service's user)."""
    target = shlex.quote(posixpath.join(data_dir, FILE_NAME))
    template = shlex.quote(posixpath.join(data_dir, f".{FILE_NAME}.XXXXXXXX"))
    return (
        f'tmp=$(mktemp {template}) && {{ cat > "$tmp" && chmod 0644 "$tmp" && mv -f "$tmp" {target}; }} '
        f'|| {{ rm -f "$tmp"; exit 1; }}'
    )


def publish(
    host: Host,
    settings: Settings,
    reports_dir: Path,
    *,
    target_name: str,
    fleet: Sequence[FleetHost],
    plan_file: Path = DEFAULT_PLAN,
) -> dict[str, Any] | None:
    """Publish what the controller has recorded for ``target_name`` to the dashboard on
    ``host`` (the primary). Returns the document, or None when nothing was written: a dry run,
    or a host where Golf-4 has not made the data directory."""
    if host.mode == "check":
        return None
    data_dir = settings.golf4.data_dir
    if not host.run(f"test -d {shlex.quote(data_dir)}", check=False).ok:
        return None
    published = document(
        reports_dir,
        target_name=target_name,
        fleet=fleet,
        signals_kept=settings.golf4.signals_kept,
        plan_file=plan_file,
    )
    host.run(upload_command(data_dir), stdin=json.dumps(published, indent=1, sort_keys=True) + "\n")
    return published
